"""Fashion-MNIST with a small Vision Transformer: attention heads and FFN neurons as units."""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """4 blocks of 4 heads (16 features each) and 128 ReLU neurons, width 64; SGD, momentum 0.9.

  lr 0.05 (×0.1 at epochs 12 and 16), λ 2e-3, batch 128, 8,000 iterations, eval
  every 1,000. Block ``b``'s heads are group ``2b``, its FFN neurons group
  ``2b + 1``; the blocks are joined by residual connections, so there is no
  layer balance. With momentum 0.9 PathProx thresholds at λγ/(1 − β)
  (``--threshold-rule paper``: λγ); ``fashion_mnist_vit_adamw`` is the same
  model under AdamW.
  """
  config = common.get_config()
  config.experiment = "fashion_mnist_vit"
  config.dataset = "fashion_mnist"
  config.model = "vit"
  config.num_heads = (4, 4, 4, 4)  # attention heads of each block
  config.mlp_dim = (128, 128, 128, 128)  # ReLU FFN neurons of each block
  config.width = 64  # token width (d_model)
  config.head_dim = 16  # features per head
  config.patch_size = 7  # side of the square patches: 16 patches of 28x28 images
  config.balance = False  # residual blocks form no chain of groups
  config.lr = 0.05
  config.momentum = 0.9
  config.lr_milestones = (12, 16)
  config.weight_decay = 2e-3
  config.batch_size = 128
  config.total_iter = 8_000  # 18.6 epochs of ceil(55,000 / 128) = 430 steps
  config.save_freq = 2_000
  config.eval_batch_size = 5000
  return config
