"""Test session set-up: eight fake CPU devices, and small generated raw data sets."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import gzip  # noqa: E402
import pathlib  # noqa: E402
import pickle  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REAL_MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  """Writes a uint8 array as a gzipped IDX file (the MNIST format)."""
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def class_images(labels: np.ndarray, shape: tuple[int, ...], seed: int) -> np.ndarray:
  """Noisy images whose brightest stripe tells the class: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 60, size=(len(labels), *shape), dtype=np.uint8)
  rows = shape[0] // 10
  for i, label in enumerate(labels):
    images[i, label * rows : (label + 1) * rows] = 255
  return images


def make_mnist_files(directory: pathlib.Path, train: int = 600, test: int = 100) -> pathlib.Path:
  """The four MNIST IDX files with generated 28x28 images."""
  directory.mkdir(parents=True, exist_ok=True)
  for prefix, n, seed in (("train", train, 0), ("t10k", test, 1)):
    labels = np.arange(n, dtype=np.uint8) % 10
    np.random.default_rng(seed).shuffle(labels)
    write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", class_images(labels, (28, 28), seed))
    write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return directory


def make_cifar_batches(directory: pathlib.Path, per_batch: int = 20) -> pathlib.Path:
  """CIFAR-10's python pickle batches (``cifar-10-batches-py/``) with generated images."""
  folder = directory / "cifar-10-batches-py"
  folder.mkdir(parents=True, exist_ok=True)
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  for seed, name in enumerate(names):
    labels = np.arange(per_batch) % 10
    images = class_images(labels, (32, 32, 3), seed).transpose(0, 3, 1, 2).reshape(per_batch, -1)
    with open(folder / name, "wb") as f:
      pickle.dump({b"data": images, b"labels": labels.tolist()}, f)
  return directory


@pytest.fixture(scope="session")
def raw_mnist(tmp_path_factory) -> pathlib.Path:
  return make_mnist_files(tmp_path_factory.mktemp("raw_mnist"))


@pytest.fixture(scope="session")
def raw_cifar(tmp_path_factory) -> pathlib.Path:
  return make_cifar_batches(tmp_path_factory.mktemp("raw_cifar"))
