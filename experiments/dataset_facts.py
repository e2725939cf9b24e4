"""What the harness knows of each data set before loading it: one table, read without TFDS.

Where the raw files are looked for first is here too (:func:`raw_data_dir`).

:data:`DATASETS` is the one list of the data sets: each has its release's TFDS builder in
:mod:`experiments.releases` (``data.BUILDERS``, in the same order, with as many classes and
as many channels; ``tests/harness/test_input_pipeline.py`` checks that they agree).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images [N, H, W, C] and int32 labels [N]
RAW_DIR_ENV = "PATHPROX_RAW_DATA_DIR"  # the raw-data folder where none is given


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


def raw_data_dir(given: str | None) -> str | None:
  """The folder of the raw files to prepare from: ``given``, else ``$PATHPROX_RAW_DATA_DIR``.

  Returns:
    The folder, or None where neither names one.
  """
  return given or os.environ.get(RAW_DIR_ENV) or None
