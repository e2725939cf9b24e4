"""CIFAR-10 with VGG19 without batch norm, eight conv-pair groups."""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """lr 0.1 (×0.1 at epochs 80, 120), λ 1e-3, batch 128, 1,000 epochs, eval every 100 steps."""
  config = common.get_config()
  config.experiment = "cifar_vgg"
  config.dataset = "cifar10"
  config.split = "holdout"
  config.val_size = 5000
  config.augment = True
  config.model = "vgg"
  config.channels = (64, 64, 128, 128, 256, 256, 256, 256) + (512,) * 8
  config.pool_after = (1, 3, 7, 11)
  config.lr = 0.1
  config.lr_milestones = (80, 120)
  config.weight_decay = 1e-3
  config.batch_size = 128
  config.total_iter = 1000 * 352  # 1,000 epochs of ceil(45,000 / 128) = 352 steps
  config.log_freq = 100
  config.save_freq = 10_000
  config.eval_batch_size = 1000
  return config
