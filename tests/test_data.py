"""Data sets through TFDS without TensorFlow: raw files, downloads, errors, real MNIST."""

import functools
import gzip
import hashlib
import http.server
import pathlib
import pickle
import tarfile
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import REAL_MNIST, write_idx

from experiments import data

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
UNREACHABLE_URL = "http://127.0.0.1:1/"  # connection refused: no test touches the internet


@pytest.fixture(autouse=True)
def offline(monkeypatch):
  monkeypatch.delenv(data.RAW_DIR_ENV, raising=False)
  monkeypatch.setenv(data.URL_ENV, UNREACHABLE_URL)


def random_split(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> data.Arrays:
  return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.int32)


def write_idx_files(directory: pathlib.Path) -> dict[str, data.Arrays]:
  """The four MNIST-format files with random contents; returns the expected arrays."""
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {"train": random_split(rng, 30, (28, 28, 1)), "test": random_split(rng, 12, (28, 28, 1))}
  for split, (images_file, labels_file) in data.IdxBuilder.FILES.items():
    write_idx(directory / images_file, arrays[split][0][..., 0])
    write_idx(directory / labels_file, arrays[split][1])
  return arrays


def assert_arrays_equal(actual: dict[str, data.Arrays], expected: dict[str, data.Arrays]) -> None:
  assert actual.keys() == expected.keys()
  for split, (images, labels) in expected.items():
    assert actual[split][0].dtype == np.uint8 and actual[split][1].dtype == np.int32
    np.testing.assert_array_equal(actual[split][0], images)
    np.testing.assert_array_equal(actual[split][1], labels)


def sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def http_server(tmp_path):
  """A local HTTP server of the folder it yields, and its address."""
  root = tmp_path / "served"
  root.mkdir()

  class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(QuietHandler, directory=root)
  )
  thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  yield root, f"http://127.0.0.1:{server.server_port}/"
  server.shutdown()
  thread.join(timeout=10)
  server.server_close()


@pytest.mark.skipif(not REAL_MNIST.exists(), reason=f"real MNIST not found at {REAL_MNIST}")
def test_real_mnist_prepared_once_then_reused(tmp_path):
  arrays = data.load_arrays("mnist", data_dir=str(tmp_path / "tfds"), raw_dir=str(REAL_MNIST))
  (train_images, train_labels), (test_images, test_labels) = arrays["train"], arrays["test"]
  assert train_images.shape == (60000, 28, 28, 1) and test_images.shape == (10000, 28, 28, 1)
  assert train_labels.shape == (60000,) and test_labels.shape == (10000,)
  assert train_images.dtype == np.uint8 and train_labels.dtype == np.int32
  assert np.bincount(train_labels).tolist() == MNIST_TRAIN_COUNTS
  with gzip.open(REAL_MNIST / "train-labels-idx1-ubyte.gz") as f:
    np.testing.assert_array_equal(train_labels, np.frombuffer(f.read(), np.uint8, offset=8))
  with gzip.open(REAL_MNIST / "t10k-images-idx3-ubyte.gz") as f:
    idx_test_images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10000, 28, 28, 1)
  np.testing.assert_array_equal(test_images, idx_test_images)

  # No raw files and no network now: only the prepared data can answer.
  again = data.load_arrays("mnist", data_dir=str(tmp_path / "tfds"), raw_dir=str(tmp_path))
  assert_arrays_equal(again, arrays)


def test_fashion_mnist_from_raw_dir_env(tmp_path, monkeypatch):
  expected = write_idx_files(tmp_path / "raw")
  monkeypatch.setenv(data.RAW_DIR_ENV, str(tmp_path / "raw"))
  arrays = data.load_arrays("fashion_mnist", data_dir=str(tmp_path / "tfds"))
  assert_arrays_equal(arrays, expected)
  # A registered TFDS builder: TFDS's own reader finds the prepared data by name.
  source = tfds.data_source("pathprox_fashion_mnist", data_dir=tmp_path / "tfds", split="test")
  np.testing.assert_array_equal(source[3]["image"], expected["test"][0][3])


def write_cifar_folder(folder: pathlib.Path) -> dict[str, data.Arrays]:
  """CIFAR-10's pickle batches with random contents; returns the expected arrays."""
  rng = np.random.default_rng(1)
  folder.mkdir(parents=True)
  names = data.PathproxCifar10.BATCHES
  batches = {name: random_split(rng, 4, (32, 32, 3)) for name in names["train"] + names["test"]}
  for name, (images, labels) in batches.items():
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # red, green, blue planes
    (folder / name).write_bytes(pickle.dumps({b"data": rows, b"labels": labels.tolist()}))
  (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}))
  return {
    split: tuple(np.concatenate([batches[name][i] for name in names[split]]) for i in (0, 1))
    for split in names
  }


@pytest.mark.parametrize("packed", ["folder", "archive"])
def test_cifar10_from_pickle_batches(tmp_path, packed):
  folder = tmp_path / "extract" / "cifar-10-batches-py"
  expected = write_cifar_folder(folder)
  if packed == "folder":
    raw_dir = folder.parent
  else:
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    with tarfile.open(raw_dir / "cifar-10-python.tar.gz", "w:gz") as archive:
      # Out of batch order, with a member to skip, as in the release.
      for name in ["test_batch", "data_batch_4", "batches.meta", "data_batch_1", "data_batch_2",
                   "data_batch_3", "data_batch_5"]:  # fmt: skip
        archive.add(folder / name, arcname=f"cifar-10-batches-py/{name}")
  arrays = data.load_arrays("cifar10", data_dir=str(tmp_path / "tfds"), raw_dir=str(raw_dir))
  assert_arrays_equal(arrays, expected)


def test_download_verified_by_file_name(tmp_path, http_server, monkeypatch):
  served, url = http_server
  expected = write_idx_files(served)
  sha256s = {name: sha256(served / name) for name in data.PathproxMnist.SHA256}
  monkeypatch.setattr(data.PathproxMnist, "SHA256", sha256s)
  monkeypatch.setenv(data.URL_ENV, url)
  arrays = data.load_arrays("mnist", data_dir=str(tmp_path / "tfds"))
  assert_arrays_equal(arrays, expected)
  downloads = tmp_path / "tfds" / "downloads" / "pathprox_mnist"
  assert sorted(p.name for p in downloads.iterdir()) == sorted(sha256s)


def test_corrupted_download_rejected_and_discarded(tmp_path, http_server, monkeypatch):
  served, url = http_server
  write_idx_files(served)
  sha256s = {name: sha256(served / name) for name in data.PathproxMnist.SHA256}
  monkeypatch.setattr(data.PathproxMnist, "SHA256", sha256s)
  monkeypatch.setenv(data.URL_ENV, url)
  with gzip.open(served / "train-labels-idx1-ubyte.gz", "ab") as f:
    f.write(b"\x07")  # one more byte: a different file of the same name

  with pytest.raises(data.DatasetUnavailableError, match="train-labels-idx1-ubyte.gz") as error:
    data.load_arrays("mnist", data_dir=str(tmp_path / "tfds"))
  assert sha256s["train-labels-idx1-ubyte.gz"] in str(error.value)
  downloads = tmp_path / "tfds" / "downloads" / "pathprox_mnist"
  assert not any("train-labels" in p.name for p in downloads.iterdir())
  assert not data.builder("mnist", data_dir=str(tmp_path / "tfds")).is_prepared()


@pytest.mark.parametrize("name", data.DATASETS)
def test_missing_data_set_says_how_to_get_it(tmp_path, name):
  with pytest.raises(data.DatasetUnavailableError) as error:
    data.load_arrays(name, data_dir=str(tmp_path / "tfds"), raw_dir=str(tmp_path))
  message = str(error.value)
  for expected in ("internet", "--raw-data-dir", data.RAW_DIR_ENV, UNREACHABLE_URL, str(tmp_path)):
    assert expected in message
  assert all(file_name in message for file_name in data.BUILDERS[name].SHA256)


def test_malformed_raw_files_are_a_clear_error(tmp_path):
  write_idx_files(tmp_path / "mnist")
  with gzip.open(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", "wb") as f:
    f.write(b"not an IDX file")
  with pytest.raises(data.DatasetUnavailableError, match="t10k-images-idx3-ubyte.gz"):
    data.load_arrays("mnist", data_dir=str(tmp_path / "tfds"), raw_dir=str(tmp_path / "mnist"))
  write_cifar_folder(tmp_path / "cifar" / "cifar-10-batches-py")
  (tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_3").unlink()
  with pytest.raises(data.DatasetUnavailableError, match="lacks the CIFAR-10 batches data_batch_3"):
    data.load_arrays("cifar10", data_dir=str(tmp_path / "tfds"), raw_dir=str(tmp_path / "cifar"))


def test_unknown_data_set_names_the_known_ones():
  with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10"):
    data.load_arrays("imagenet")
