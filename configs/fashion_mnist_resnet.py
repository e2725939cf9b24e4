"""Fashion-MNIST with a ResNet-20-style network: its blocks' inner BatchNorm channels as units."""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """3 stages of 3 basic blocks, widths 8/16/32 (ResNet-20's 16/32/64 halved for 2 CPU cores).

  SGD with momentum 0.9, lr 0.05 on a cosine schedule to 0, λ 5e-4, batch 128, 4,000
  iterations (9.3 epochs of ceil(55,000 / 128) = 430 steps), eval every 500. Block ``b``'s
  inner channels (conv1 → BatchNorm → ReLU → conv2) are group ``b``: the BatchNorm's scale
  and bias are their "in" weights, conv1 follows them; the stem and the block outputs, added
  to the skips, are in no group, and the skips leave no chain to balance. ResNet-20 proper:
  ``--stage-widths 16,32,64 --inner-widths 16,16,16,32,32,32,64,64,64``. Methods ``pathprox``,
  ``wd`` and ``slimming`` (``wd`` plus ``--scale-l1`` 1e-5 on the units' BatchNorm scales, then
  ``experiments.prune --score scale`` and ``experiments.heal``).
  """
  config = common.get_config()
  config.experiment = "fashion_mnist_resnet"
  config.dataset = "fashion_mnist"
  config.model = "resnet"
  config.stage_widths = (8, 16, 32)  # ResNet: each stage's output channels
  config.blocks = 3  # ResNet: basic blocks per stage
  config.inner_widths = (8, 8, 8, 16, 16, 16, 32, 32, 32)  # ResNet: each block's inner channels
  config.balance = False  # residual blocks form no chain of groups
  config.lr = 0.05
  config.lr_schedule = "cosine"
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.batch_size = 128
  config.total_iter = 4_000
  config.log_freq = 500
  config.save_freq = 1_000
  config.eval_batch_size = 5000
  return config
