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
from conftest import write_idx

from experiments import data, dataset_facts, raw_files, releases

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
UNREACHABLE_URL = "http://127.0.0.1:1/"  # connection refused: no test touches the internet
REAL_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")  # Debian's package


@pytest.fixture(autouse=True)
def offline(monkeypatch):
  monkeypatch.delenv(raw_files.RAW_DIR_ENV, raising=False)
  monkeypatch.setenv(raw_files.URL_ENV, UNREACHABLE_URL)


def random_split(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> data.Arrays:
  return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.int32)


def write_idx_files(directory: pathlib.Path) -> dict[str, data.Arrays]:
  """The four MNIST-format files with random contents; returns the expected arrays."""
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {"train": random_split(rng, 30, (28, 28, 1)), "test": random_split(rng, 12, (28, 28, 1))}
  for split, (images_file, labels_file) in releases.IdxBuilder.FILES.items():
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


# On the notebooks' xdist worker (--dist loadgroup): the session's real MNIST folder is prepared
# once, here when this test comes first, and the notebooks reuse it.
@pytest.mark.xdist_group("notebooks")
@pytest.mark.slow
def test_real_mnist_prepared_once_then_reused(real_mnist, real_mnist_data_dir, tmp_path):
  prepared = str(real_mnist_data_dir)
  arrays = data.load_arrays("mnist", data_dir=prepared, raw_dir=str(real_mnist))
  (train_images, train_labels), (test_images, test_labels) = arrays["train"], arrays["test"]
  assert train_images.shape == (60000, 28, 28, 1) and test_images.shape == (10000, 28, 28, 1)
  assert train_labels.shape == (60000,) and test_labels.shape == (10000,)
  assert train_images.dtype == np.uint8 and train_labels.dtype == np.int32
  assert np.bincount(train_labels).tolist() == MNIST_TRAIN_COUNTS
  with gzip.open(real_mnist / "train-labels-idx1-ubyte.gz") as f:
    np.testing.assert_array_equal(train_labels, np.frombuffer(f.read(), np.uint8, offset=8))
  with gzip.open(real_mnist / "t10k-images-idx3-ubyte.gz") as f:
    idx_test_images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10000, 28, 28, 1)
  np.testing.assert_array_equal(test_images, idx_test_images)

  # No raw files and no network now: only the prepared data can answer.
  again = data.load_arrays("mnist", data_dir=prepared, raw_dir=str(tmp_path))
  assert_arrays_equal(again, arrays)


def test_fashion_mnist_from_raw_dir_env(tmp_path, monkeypatch):
  expected = write_idx_files(tmp_path / "raw")
  monkeypatch.setenv(raw_files.RAW_DIR_ENV, str(tmp_path / "raw"))
  arrays = data.load_arrays("fashion_mnist", data_dir=str(tmp_path / "tfds"), allow_unofficial=True)
  assert_arrays_equal(arrays, expected)
  # A registered TFDS builder: TFDS's own reader finds the prepared data by name.
  source = tfds.data_source("pathprox_fashion_mnist", data_dir=tmp_path / "tfds", split="test")
  np.testing.assert_array_equal(source[3]["image"], expected["test"][0][3])


def test_raw_data_dir_is_the_given_folder_else_the_environment(monkeypatch):
  monkeypatch.setenv(raw_files.RAW_DIR_ENV, "/env/raw")
  assert dataset_facts.raw_data_dir("/given") == "/given"
  assert dataset_facts.raw_data_dir("") == dataset_facts.raw_data_dir(None) == "/env/raw"
  monkeypatch.setenv(raw_files.RAW_DIR_ENV, "")
  assert dataset_facts.raw_data_dir("") is None


def write_cifar_folder(folder: pathlib.Path) -> dict[str, data.Arrays]:
  """CIFAR-10's pickle batches with random contents; returns the expected arrays."""
  rng = np.random.default_rng(1)
  folder.mkdir(parents=True)
  names = releases.PathproxCifar10.BATCHES
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
  arrays = data.load_arrays(
    "cifar10", data_dir=str(tmp_path / "tfds"), raw_dir=str(raw_dir), allow_unofficial=True
  )
  assert_arrays_equal(arrays, expected)


def test_download_verified_by_file_name(tmp_path, http_server, monkeypatch):
  served, url = http_server
  expected = write_idx_files(served)
  sha256s = {name: sha256(served / name) for name in releases.PathproxMnist.SHA256}
  monkeypatch.setattr(releases.PathproxMnist, "SHA256", sha256s)
  monkeypatch.setenv(raw_files.URL_ENV, url)
  arrays = data.load_arrays("mnist", data_dir=str(tmp_path / "tfds"), allow_unofficial=True)
  assert_arrays_equal(arrays, expected)
  downloads = tmp_path / "tfds" / "downloads" / "pathprox_mnist"
  assert sorted(p.name for p in downloads.iterdir()) == sorted(sha256s)


def test_corrupted_download_rejected_and_discarded(tmp_path, http_server, monkeypatch):
  served, url = http_server
  write_idx_files(served)
  sha256s = {name: sha256(served / name) for name in releases.PathproxMnist.SHA256}
  monkeypatch.setattr(releases.PathproxMnist, "SHA256", sha256s)
  monkeypatch.setenv(raw_files.URL_ENV, url)
  with gzip.open(served / "train-labels-idx1-ubyte.gz", "ab") as f:
    f.write(b"\x07")  # one more byte: a different file of the same name

  with pytest.raises(data.DatasetUnavailableError, match="train-labels-idx1-ubyte.gz") as error:
    data.load_arrays("mnist", data_dir=str(tmp_path / "tfds"))
  assert sha256s["train-labels-idx1-ubyte.gz"] in str(error.value)
  downloads = tmp_path / "tfds" / "downloads" / "pathprox_mnist"
  assert not any("train-labels" in p.name for p in downloads.iterdir())
  assert not data.builder("mnist", data_dir=str(tmp_path / "tfds")).is_prepared()


@pytest.mark.parametrize("name", dataset_facts.DATASETS)
def test_missing_data_set_says_how_to_get_it(tmp_path, name):
  with pytest.raises(data.DatasetUnavailableError) as error:
    data.load_arrays(name, data_dir=str(tmp_path / "tfds"), raw_dir=str(tmp_path))
  message = str(error.value)
  for expected in (
    "internet",
    "--raw-data-dir",
    raw_files.RAW_DIR_ENV,
    UNREACHABLE_URL,
    str(tmp_path),
  ):
    assert expected in message
  assert all(file_name in message for file_name in data.BUILDERS[name].SHA256)


def test_malformed_raw_files_are_a_clear_error(tmp_path):
  write_idx_files(tmp_path / "mnist")
  with gzip.open(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", "wb") as f:
    f.write(b"not an IDX file")
  with pytest.raises(data.DatasetUnavailableError, match="t10k-images-idx3-ubyte.gz"):
    data.load_arrays(
      "mnist",
      data_dir=str(tmp_path / "tfds"),
      raw_dir=str(tmp_path / "mnist"),
      allow_unofficial=True,
    )
  write_cifar_folder(tmp_path / "cifar" / "cifar-10-batches-py")
  (tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_3").unlink()
  with pytest.raises(data.DatasetUnavailableError, match="lacks the CIFAR-10 batches data_batch_3"):
    data.load_arrays(
      "cifar10",
      data_dir=str(tmp_path / "tfds"),
      raw_dir=str(tmp_path / "cifar"),
      allow_unofficial=True,
    )


def test_unknown_data_set_names_the_known_ones():
  with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10"):
    data.load_arrays("imagenet")


def digests_of(directory: pathlib.Path) -> dict[str, str]:
  """sha256 of each IDX file's decompressed bytes, by file name."""
  return {
    name: hashlib.sha256(gzip.decompress((directory / name).read_bytes())).hexdigest()
    for name in releases.IdxBuilder.FILES["train"] + releases.IdxBuilder.FILES["test"]
  }


def recompress(source: pathlib.Path, target: pathlib.Path, level: int) -> None:
  target.mkdir(parents=True)
  for path in source.iterdir():
    content = gzip.decompress(path.read_bytes())
    (target / path.name).write_bytes(gzip.compress(content, compresslevel=level))


def test_raw_files_are_identified_by_their_decompressed_content(tmp_path, monkeypatch):
  expected = write_idx_files(tmp_path / "official")
  monkeypatch.setattr(releases.PathproxMnist, "CONTENT", digests_of(tmp_path / "official"))
  recompress(tmp_path / "official", tmp_path / "copy", level=1)
  copy = tmp_path / "copy" / "train-images-idx3-ubyte.gz"
  assert copy.read_bytes() != (tmp_path / "official" / copy.name).read_bytes()
  arrays = data.load_arrays("mnist", data_dir=str(tmp_path / "tfds"), raw_dir=str(copy.parent))
  assert_arrays_equal(arrays, expected)
  recorded = data.builder("mnist", data_dir=str(tmp_path / "tfds")).info.metadata
  assert recorded["raw_content"] == releases.PathproxMnist.CONTENT

  # One label changed: no longer the official release, whatever the file name.
  labels = expected["test"][1].copy()
  labels[0] = (labels[0] + 1) % 10
  write_idx(tmp_path / "official" / "t10k-labels-idx1-ubyte.gz", labels)
  with pytest.raises(data.DatasetUnavailableError) as error:
    data.load_arrays("mnist", data_dir=str(tmp_path / "other"), raw_dir=str(tmp_path / "official"))
  assert str(error.value) == (
    f"the raw files in {tmp_path / 'official'} are not the official mnist release: the content "
    "of t10k-labels-idx1-ubyte.gz differs (sha256 of the decompressed bytes). Use the official "
    "files (a recompressed copy is fine), or pass --allow-unofficial-data true to prepare "
    "generated or edited data"
  )
  assert not data.builder("mnist", data_dir=str(tmp_path / "other")).is_prepared()


@pytest.mark.parametrize("allow_unofficial", [False, True])
def test_another_data_sets_files_are_refused_even_when_unofficial_is_allowed(
  tmp_path, monkeypatch, allow_unofficial
):
  write_idx_files(tmp_path / "digits")
  monkeypatch.setattr(releases.PathproxMnist, "CONTENT", digests_of(tmp_path / "digits"))
  with pytest.raises(data.DatasetUnavailableError) as error:
    data.load_arrays(
      "fashion_mnist",
      data_dir=str(tmp_path / "tfds"),
      raw_dir=str(tmp_path / "digits"),
      allow_unofficial=allow_unofficial,
    )
  assert str(error.value).startswith(
    f"the raw files in {tmp_path / 'digits'} are mnist, not fashion_mnist: the content of "
  )
  assert not data.builder("fashion_mnist", data_dir=str(tmp_path / "tfds")).is_prepared()


@pytest.mark.skipif(not REAL_FASHION_MNIST.exists(), reason=f"no {REAL_FASHION_MNIST}")
def test_real_fashion_mnist_is_recognised_and_never_prepared_as_mnist(tmp_path):
  with pytest.raises(data.DatasetUnavailableError, match="are fashion_mnist, not mnist"):
    data.load_arrays(
      "mnist", data_dir=str(tmp_path), raw_dir=str(REAL_FASHION_MNIST), allow_unofficial=True
    )
  # Debian's copy differs from the served files in its gzip headers, not in content.
  assert digests_of(REAL_FASHION_MNIST) == releases.PathproxFashionMnist.CONTENT


def test_prepared_data_from_unofficial_files_needs_the_same_permission(tmp_path):
  write_idx_files(tmp_path / "raw")
  tfds_dir = str(tmp_path / "tfds")
  data.load_arrays("mnist", data_dir=tfds_dir, raw_dir=str(tmp_path / "raw"), allow_unofficial=True)
  with pytest.raises(data.DatasetUnavailableError) as error:
    data.load_arrays("mnist", data_dir=tfds_dir)  # no raw files needed: it is prepared
  prepared = data.builder("mnist", data_dir=tfds_dir).data_dir
  assert str(error.value) == (
    f"the prepared data set mnist in {prepared} was prepared from raw files that are not the "
    f"official mnist release: pass --allow-unofficial-data true to use it anyway, or delete "
    f"{prepared} to prepare it again from the official raw files"
  )
  assert data.load_arrays("mnist", data_dir=tfds_dir, allow_unofficial=True)["test"][0].shape == (
    12,
    28,
    28,
    1,
  )


def cli_error(argv: list[str], tmp_path: pathlib.Path, capsys) -> str:
  """The one line a tiny mnist_subset_mlp run prints when it exits 2, having written nothing."""
  from experiments import cli

  workdir = tmp_path / "run"
  argv = [*argv, "--workdir", str(workdir), "--data-dir", str(tmp_path / "tfds"),
          "--allow-unofficial-data", "true", "--train-per-class", "1",
          "--progress", "false"]  # fmt: skip
  assert cli.main("mnist_subset_mlp", argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert not workdir.exists()
  return err[-1]


def test_raw_label_out_of_range_is_a_one_line_error(tmp_path, capsys):
  write_idx_files(tmp_path / "raw")
  labels = np.arange(30, dtype=np.uint8) % 10
  labels[7] = 10
  write_idx(tmp_path / "raw" / "train-labels-idx1-ubyte.gz", labels)
  err = cli_error(["--raw-data-dir", str(tmp_path / "raw")], tmp_path, capsys)
  assert err == (
    "error: the raw train labels of mnist hold 10 at example 7, outside 0..9: the raw files "
    "are damaged or not this data set"
  )
  assert not data.builder("mnist", data_dir=str(tmp_path / "tfds")).is_prepared()


def test_truncated_prepared_file_is_a_one_line_error(tmp_path, capsys):
  write_idx_files(tmp_path / "raw")
  tfds_dir = str(tmp_path / "tfds")
  data.load_arrays("mnist", data_dir=tfds_dir, raw_dir=str(tmp_path / "raw"), allow_unofficial=True)
  (record,) = (tmp_path / "tfds").rglob("pathprox_mnist-train.array_record*")
  content = record.read_bytes()
  record.write_bytes(content[: len(content) // 2])
  err = cli_error([], tmp_path, capsys)
  prepared = data.builder("mnist", data_dir=tfds_dir).data_dir
  assert err.startswith(f"error: the prepared train split of mnist in {prepared} is damaged (")
  assert err.endswith(f"; delete {prepared} to prepare it again")
  assert record.read_bytes() == content[: len(content) // 2]


def test_cifar10_batches_are_identified_by_their_md5(tmp_path, monkeypatch):
  folder = tmp_path / "raw" / "cifar-10-batches-py"
  write_cifar_folder(folder)
  with pytest.raises(data.DatasetUnavailableError, match=r"differs \(md5 of the decompressed"):
    data.load_arrays("cifar10", data_dir=str(tmp_path / "a"), raw_dir=str(folder.parent))
  md5s = {
    name: hashlib.md5((folder / name).read_bytes()).hexdigest()
    for name in releases.PathproxCifar10.CONTENT
  }
  monkeypatch.setattr(releases.PathproxCifar10, "CONTENT", md5s)
  arrays = data.load_arrays("cifar10", data_dir=str(tmp_path / "b"), raw_dir=str(folder.parent))
  assert len(arrays["train"][1]) == 20
