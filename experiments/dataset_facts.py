"""What the harness knows of each data set before loading it: one table, read without TFDS."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images [N, H, W, C] and int32 labels [N]


class DatasetFacts(NamedTuple):
  """A data set's sizes (for the split checks) and its normalisation."""

  train: int  # training images
  smallest_class: int  # training images of the rarest class
  classes: int
  mean: tuple[float, ...]  # per channel, of the training images scaled to [0, 1]
  std: tuple[float, ...]


DATASETS = {
  "mnist": DatasetFacts(60_000, 5_421, 10, (0.1307,), (0.3081,)),
  "fashion_mnist": DatasetFacts(60_000, 6_000, 10, (0.2860,), (0.3530,)),
  "cifar10": DatasetFacts(50_000, 5_000, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
