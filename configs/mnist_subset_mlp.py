"""MNIST subset (1,000 images) with the factorised MLP: the paper's first experiment."""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """100 images per class; lr 0.3, λ 1e-4, batch 200, 100k iterations, eval every 1k."""
  config = common.get_config()
  config.experiment = "mnist_subset_mlp"
  config.split = "subset"
  config.relu = (True, False, True, False, True, False)  # linear bottleneck in every group
  config.lr = 0.3
  config.total_iter = 100_000
  return config
