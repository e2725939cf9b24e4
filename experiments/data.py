"""The experiments' image data sets, through tensorflow-datasets without TensorFlow.

Each data set is a TFDS builder of its own name (``pathprox_mnist``,
``pathprox_fashion_mnist``, ``pathprox_cifar10``: reusing TFDS's names would
replace TFDS's own builders). Images are ``tfds.features.Tensor`` uint8 features
in ``array_record`` files, the one storage TFDS prepares and reads back without
TensorFlow (its ``Image`` feature and ``tfds.load`` need TensorFlow).

A builder prepares its data set from the raw files of the original release, found

1. in the raw-data folder (``raw_dir``, else ``$PATHPROX_RAW_DATA_DIR``), else
2. downloaded from the official address (``url``, else ``$PATHPROX_DATA_URL``,
   else the builder's ``URL``) and checked against the builder's ``SHA256``.

Before anything is prepared, the raw files are identified by their content: the
digest of each file's decompressed bytes (so a recompressed copy of an official
file passes). The rule:

* files whose content is another known data set's release are always refused
  (MNIST's digits are never prepared as Fashion-MNIST);
* files whose content is no official release (generated, edited or damaged
  data) are refused unless ``allow_unofficial`` (``--allow-unofficial-data``);
* labels must lie in ``[0, number of classes)``.

The prepared data records the digests of the raw content it came from, and
:func:`load_arrays` refuses prepared data whose record is not the official
release of the requested data set (unless ``allow_unofficial``). Prepared data
in the TFDS ``data_dir`` is reused without any raw files, also by
``tfds.data_source("pathprox_mnist", data_dir=...)`` (which does not check the
record). Examples keep the order of the raw files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments import releases  # noqa: F401 - defines the releases' builders
from experiments.dataset_facts import DATASETS, Arrays
from experiments.raw_files import RELEASES as BUILDERS
from experiments.raw_files import SPLITS, DatasetUnavailableError, RawFilesBuilder


def builder(name: str, **kwargs: Any) -> RawFilesBuilder:
  """The TFDS builder of a data set by its experiments name.

  Args:
    name: one of :data:`experiments.dataset_facts.DATASETS`.
    **kwargs: the builder's arguments (``data_dir``, ``raw_dir``, ``url``, ...).

  Returns:
    The builder, e.g. ``PathproxMnist`` for ``"mnist"``.

  Raises:
    ValueError: ``name`` is not a known data set.
  """
  if name not in BUILDERS:
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
  return BUILDERS[name](**kwargs)


def _to_arrays(source: Sequence[dict[str, Any]]) -> Arrays:
  """All examples of a data source, read in one batch (one read per record is slow)."""
  examples = source.__getitems__(range(len(source)))
  images = np.stack([example["image"] for example in examples])
  return images, np.array([example["label"] for example in examples], np.int32)


def load_arrays(
  name: str,
  *,
  data_dir: str | None = None,
  raw_dir: str | None = None,
  splits: Sequence[str] = SPLITS,
  allow_unofficial: bool = False,
) -> dict[str, Arrays]:
  """A data set's splits as NumPy arrays, prepared first if needed.

  Preparation happens once per ``data_dir``; later calls only read the
  ``array_record`` files back (about a second for MNIST's 60000 training images).

  Args:
    name: one of :data:`experiments.dataset_facts.DATASETS` (``"mnist"``,
      ``"fashion_mnist"``, ``"cifar10"``).
    data_dir: the TFDS data folder (``None``: ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``, as for TFDS).
    raw_dir: folder of the raw files to prepare from (``None``:
      ``$PATHPROX_RAW_DATA_DIR``); without them they are downloaded.
    splits: the splits to read (preparation makes all of them).
    allow_unofficial: accept raw files, and prepared data made from raw files,
      that are no official release of the data set (generated or edited data).
      Another known data set's files are refused even so.

  Returns:
    ``{"train": (images, labels), "test": (images, labels)}`` (the ``splits``): images uint8
    ``[N, H, W, C]``, labels int32 ``[N]``, in the raw files' order.

  Raises:
    ValueError: ``name`` is not a known data set.
    DatasetUnavailableError: the data set is not prepared and cannot be obtained,
      its raw files or prepared data are not the data set's official release (and
      ``allow_unofficial`` is not set), or its prepared files are damaged.

  Example:
    >>> arrays = load_arrays("mnist", raw_dir="/data/mnist")  # doctest: +SKIP
    >>> arrays["train"][0].shape  # doctest: +SKIP
    (60000, 28, 28, 1)
  """
  dataset = builder(name, data_dir=data_dir, raw_dir=raw_dir, allow_unofficial=allow_unofficial)
  dataset.download_and_prepare()  # a no-op when already prepared
  dataset.check_prepared()
  return {split: _read_prepared(dataset, split) for split in splits}


def _read_prepared(dataset: RawFilesBuilder, split: str) -> Arrays:
  """A prepared split's arrays; a damaged file is a :class:`DatasetUnavailableError`."""
  try:
    images, labels = _to_arrays(dataset.as_data_source(split))
  # array_record and the decoders raise any of these on a damaged file.
  except (OSError, RuntimeError, ValueError, TypeError, KeyError) as e:
    raise DatasetUnavailableError(
      f"the prepared {split} split of {dataset.dataset} in {dataset.data_dir} is damaged "
      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); delete "
      f"{dataset.data_dir} to prepare it again"
    ) from e
  expected = dataset.info.splits[split].num_examples
  if len(labels) != expected:
    raise DatasetUnavailableError(
      f"the prepared {split} split of {dataset.dataset} in {dataset.data_dir} holds "
      f"{len(labels)} examples, not the {expected} it was prepared with: it is damaged; "
      f"delete {dataset.data_dir} to prepare it again"
    )
  return images, labels
