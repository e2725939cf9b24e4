"""The Fashion-MNIST ViT of ``fashion_mnist_vit`` trained with AdamW, as ViTs usually are."""

import ml_collections

from configs import fashion_mnist_vit


def get_config() -> ml_collections.ConfigDict:
  """``fashion_mnist_vit``'s model, data and 8,000 steps of batch 128 under AdamW.

  AdamW (b1 0.9, b2 0.999) with lr 1e-3 after 400 steps of linear warm-up, cosine
  decay to 0, λ 0.05 (AdamW's decoupled decay: θ ← θ − γλθ on the kernels). PathProx
  (``pathprox_adamw``) replaces that decay on the heads and FFN neurons with its
  prox, threshold λγ.
  """
  config = fashion_mnist_vit.get_config()
  config.experiment = "fashion_mnist_vit_adamw"
  config.optimizer = "adamw"
  config.momentum = 0.0  # AdamW's own b1 replaces SGD's momentum
  config.lr = 1e-3
  config.lr_schedule = "cosine"
  config.lr_milestones = ()
  config.warmup_iter = 400
  config.weight_decay = 0.05
  return config
