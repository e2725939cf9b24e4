"""Full MNIST with the six-layer MLP (ReLU after every layer but the last): the defaults."""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """lr 0.1, λ 1e-4, batch 200, 50k iterations, eval every 1k (the paper's settings)."""
  config = common.get_config()
  config.experiment = "mnist_mlp"
  return config
