"""CIFAR-10 with VGG19 without batch norm, eight conv-pair groups."""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """45k/5k split, crop + flip; lr 0.1 (×0.1 at epochs 80, 120), λ 1e-3, batch 128, 1,000 epochs.

  Evaluation every 100 steps; the training loss and accuracy in ``metrics.jsonl``
  are measured on clean (unaugmented) training images, unlike the paper's code,
  which reports them on the augmented batches.
  """
  config = common.get_config()
  config.experiment = "cifar_vgg"
  config.dataset = "cifar10"
  config.augment = True
  config.model = "vgg"
  config.lr_milestones = (80, 120)
  config.weight_decay = 1e-3
  config.batch_size = 128
  config.total_iter = 1000 * 352  # 1,000 epochs of ceil(45,000 / 128) = 352 steps
  config.log_freq = 100
  config.eval_batch_size = 1000
  return config
