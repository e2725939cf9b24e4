"""Full MNIST with the six-layer MLP (ReLU after every layer but the last)."""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """lr 0.1, λ 1e-4, batch 200, 50k iterations, eval every 1k (the paper's settings)."""
  config = common.get_config()
  config.experiment = "mnist_mlp"
  config.split = "holdout"
  config.val_size = 5000
  config.relu = (True, True, True, True, True, False)
  config.lr = 0.1
  return config
