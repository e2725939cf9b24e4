"""The official releases: MNIST, Fashion-MNIST and CIFAR-10, their files, digests and parsing."""

from __future__ import annotations

import gzip
import pathlib
import pickle
import tarfile
from collections.abc import Mapping

import numpy as np

from experiments.dataset_facts import Arrays
from experiments.raw_files import DatasetUnavailableError, RawFilesBuilder


def _gunzip(path: pathlib.Path) -> bytes:
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (OSError, EOFError) as e:
    raise DatasetUnavailableError(f"{path} is not a gzip file: {e}") from e


def _parse_idx(name: str, content: bytes) -> np.ndarray:
  """The content of an IDX file (the MNIST format) of unsigned bytes as an array."""
  # Header: two zero bytes, 0x08 (unsigned bytes), the number of dimensions, big-endian sizes.
  ndim = content[3] if len(content) > 3 and content[:3] == b"\x00\x00\x08" else 0
  if ndim and len(content) >= 4 + 4 * ndim:
    shape = tuple(int(size) for size in np.frombuffer(content, ">u4", count=ndim, offset=4))
    if len(content) == 4 + 4 * ndim + np.prod(shape):
      return np.frombuffer(content, np.uint8, offset=4 + 4 * ndim).reshape(shape)
  raise DatasetUnavailableError(f"{name} is not an IDX file of unsigned bytes")


class IdxBuilder(RawFilesBuilder, skip_registration=True):
  """A data set in MNIST's four gzipped IDX files (images and labels of each split)."""

  IMAGE_SHAPE = (28, 28, 1)
  FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
  }

  def _decompress(self, files: Mapping[str, pathlib.Path]) -> dict[str, bytes]:
    return {name: _gunzip(path) for name, path in files.items()}

  def _parse(self, contents: Mapping[str, bytes]) -> dict[str, Arrays]:
    arrays = {}
    for split, (images_file, labels_file) in self.FILES.items():
      images = _parse_idx(images_file, contents[images_file])
      labels = _parse_idx(labels_file, contents[labels_file])
      if images.shape[1:] != self.IMAGE_SHAPE[:2] or labels.shape != images.shape[:1]:
        raise DatasetUnavailableError(
          f"{images_file} {images.shape} and {labels_file} {labels.shape} are not "
          f"N x {self.IMAGE_SHAPE[0]} x {self.IMAGE_SHAPE[1]} images and N labels"
        )
      arrays[split] = images[..., None], labels
    return arrays


class PathproxMnist(IdxBuilder):
  """MNIST handwritten digits (LeCun, Cortes and Burges): 60000 train, 10000 test images."""

  URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
  # The files served at URL, as registered in tensorflow_datasets/url_checksums/mnist.txt
  # (not those of the recompressed copy in shared/data/mnist, which differ in bytes).
  SHA256 = {
    "train-images-idx3-ubyte.gz": (
      "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "train-labels-idx1-ubyte.gz": (
      "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "t10k-images-idx3-ubyte.gz": (
      "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "t10k-labels-idx1-ubyte.gz": (
      "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
  }
  # sha256 of the decompressed files, the same for the files at URL and for any recompressed copy.
  CONTENT = {
    "train-images-idx3-ubyte.gz": (
      "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    ),
    "train-labels-idx1-ubyte.gz": (
      "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
    ),
    "t10k-images-idx3-ubyte.gz": (
      "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    ),
    "t10k-labels-idx1-ubyte.gz": (
      "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    ),
  }
  CLASS_NAMES = tuple(str(digit) for digit in range(10))
  HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"


class PathproxFashionMnist(IdxBuilder):
  """Fashion-MNIST (Xiao, Rasul and Vollgraf): 60000 train, 10000 test clothing images."""

  URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
  # As registered in tensorflow_datasets/url_checksums/fashion_mnist.txt. Debian's
  # dataset-fashion-mnist files differ only in their gzip headers (name and time dropped).
  SHA256 = {
    "train-images-idx3-ubyte.gz": (
      "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
    ),
    "train-labels-idx1-ubyte.gz": (
      "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
    ),
    "t10k-images-idx3-ubyte.gz": (
      "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
    ),
    "t10k-labels-idx1-ubyte.gz": (
      "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
    ),
  }
  CONTENT = {  # sha256 of the decompressed files
    "train-images-idx3-ubyte.gz": (
      "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    "train-labels-idx1-ubyte.gz": (
      "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    "t10k-images-idx3-ubyte.gz": (
      "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
    ),
    "t10k-labels-idx1-ubyte.gz": (
      "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    ),
  }
  CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
  )  # fmt: skip
  HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"


class PathproxCifar10(RawFilesBuilder):
  """CIFAR-10 (Krizhevsky, 2009): 50000 train, 10000 test 32x32 colour images.

  The raw files are the python pickle batches, as the release archive
  ``cifar-10-python.tar.gz`` or its extracted folder ``cifar-10-batches-py/``.
  """

  ARCHIVE = "cifar-10-python.tar.gz"
  FOLDER = "cifar-10-batches-py"
  BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
  URL = "https://www.cs.toronto.edu/~kriz/"
  # As published by torchvision (torchvision/prototype/datasets/_builtin/cifar.py);
  # TFDS registers only the binary release.
  SHA256 = {ARCHIVE: "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"}
  # md5 of each batch as extracted from the archive: the only digests published for them
  # (torchvision/datasets/cifar.py), which also identify the extracted folder's files.
  CONTENT_HASH = "md5"
  CONTENT = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
  }
  IMAGE_SHAPE = (32, 32, 3)
  CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
  )  # fmt: skip
  HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"

  def _find_raw(self, raw_dir: pathlib.Path) -> dict[str, pathlib.Path] | None:
    if (raw_dir / self.FOLDER).is_dir():
      return {self.ARCHIVE: raw_dir / self.FOLDER}
    return super()._find_raw(raw_dir)

  def _raw_files_description(self) -> str:
    return f"{self.ARCHIVE} (or its extracted folder {self.FOLDER}/)"

  def _decompress(self, files: Mapping[str, pathlib.Path]) -> dict[str, bytes]:
    raw = files[self.ARCHIVE]
    wanted = {name for names in self.BATCHES.values() for name in names}
    if raw.is_dir():
      batches = {name: (raw / name).read_bytes() for name in wanted if (raw / name).is_file()}
    else:
      try:
        with tarfile.open(raw, "r|gz") as archive:  # one sequential pass over the archive
          batches = {
            path.name: archive.extractfile(member).read()
            for member in archive
            if (path := pathlib.PurePosixPath(member.name)).parent.name == self.FOLDER
            and path.name in wanted
          }
      except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetUnavailableError(f"{raw} is not a gzipped tar archive: {e}") from e
    missing = sorted(wanted - set(batches))
    if missing:
      raise DatasetUnavailableError(f"{raw} lacks the CIFAR-10 batches {', '.join(missing)}")
    return batches

  def _parse(self, contents: Mapping[str, bytes]) -> dict[str, Arrays]:
    # Pickles run code when loaded: these are official (by content) or the user's own files.
    batches = {}
    for name, content in contents.items():
      try:
        batch = pickle.loads(content, encoding="bytes")
        batches[name] = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[b"labels"])
      except (pickle.UnpicklingError, EOFError, TypeError, KeyError, ValueError) as e:
        raise DatasetUnavailableError(f"{name} is not a CIFAR-10 batch: {e!r}") from e
    arrays = {}
    for split, names in self.BATCHES.items():
      images = np.concatenate([batches[name][0] for name in names])
      labels = np.concatenate([batches[name][1] for name in names])
      # Each row holds the red, green and blue 32x32 planes in turn.
      arrays[split] = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels
    return arrays
