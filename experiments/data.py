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

import abc
import gzip
import hashlib
import os
import pathlib
import pickle
import tarfile
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

RAW_DIR_ENV = "PATHPROX_RAW_DATA_DIR"
URL_ENV = "PATHPROX_DATA_URL"
SPLITS = ("train", "test")

Arrays = tuple[np.ndarray, np.ndarray]


class DatasetUnavailableError(ValueError):
  """A data set cannot be prepared or read: raw files missing, malformed or not the data set's."""


class RawFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder of an image classification data set from its original raw files.

  Subclasses set the class constants, decompress the raw files in
  :meth:`_decompress` and parse their content in :meth:`_parse`.

  Args:
    raw_dir: folder holding the raw files (``None``: ``$PATHPROX_RAW_DATA_DIR``).
    url: base address to download the raw files from (``None``:
      ``$PATHPROX_DATA_URL``, else ``URL``).
    allow_unofficial: accept raw content that is no official release
      (generated or edited data), and prepared data made from it.
    **kwargs: the arguments of ``tfds.core.GeneratorBasedBuilder`` (``data_dir``, ...).
  """

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Initial release.",
    "1.1.0": "Records the digests of the raw content; refuses another data set's files.",
  }
  URL: str  # official base address of the raw files
  SHA256: Mapping[str, str]  # sha256 of each raw file served at URL, by file name
  CONTENT_HASH = "sha256"  # the hashlib algorithm of CONTENT
  CONTENT: Mapping[str, str]  # digest of each official raw member's decompressed bytes
  IMAGE_SHAPE: tuple[int, int, int]
  CLASS_NAMES: tuple[str, ...]
  HOMEPAGE: str

  def __init__(
    self,
    *,
    raw_dir: str | None = None,
    url: str | None = None,
    allow_unofficial: bool = False,
    **kwargs: Any,
  ):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    self._raw_dir = raw_dir or os.environ.get(RAW_DIR_ENV)
    self._url = url or os.environ.get(URL_ENV) or self.URL
    self._allow_unofficial = allow_unofficial

  @property
  def dataset(self) -> str:
    """The data set's experiments name (``"mnist"`` for ``pathprox_mnist``)."""
    return self.name.removeprefix("pathprox_")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
        }
      ),
      supervised_keys=("image", "label"),
      homepage=self.HOMEPAGE,
      # The raw order is the order the experiments' fixed splits are defined on.
      disable_shuffling=True,
      # {"raw_content": {member: digest}, "content_hash": algorithm}, see check_prepared.
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    files = self._raw_files(pathlib.Path(dl_manager.download_dir) / self.name)
    contents = self._decompress(files)
    digests = {
      member: hashlib.new(self.CONTENT_HASH, content).hexdigest()
      for member, content in contents.items()
    }
    self._check_identity(digests, ", ".join(sorted({str(p.parent) for p in files.values()})))
    arrays = self._parse(contents)
    for split, (_, labels) in arrays.items():
      self._check_labels(split, labels)
    self.info.metadata.update(raw_content=digests, content_hash=self.CONTENT_HASH)
    return {split: self._generate_examples(*arrays[split]) for split in SPLITS}

  def _check_identity(self, digests: Mapping[str, str], where: str) -> None:
    """Refuses another data set's raw files, and unofficial ones unless allowed."""
    for member, digest in digests.items():
      for other, builder in BUILDERS.items():
        known = builder.CONTENT_HASH == self.CONTENT_HASH and builder.CONTENT.get(member)
        if other != self.dataset and known == digest:
          raise DatasetUnavailableError(
            f"the raw files in {where} are {other}, not {self.dataset}: the content of "
            f"{member} is {other}'s official file ({self.CONTENT_HASH} of the decompressed "
            f"bytes); pass the folder of the {self.dataset} files as --raw-data-dir"
          )
    unofficial = [member for member, digest in digests.items() if self.CONTENT[member] != digest]
    if unofficial and not self._allow_unofficial:
      raise DatasetUnavailableError(
        f"the raw files in {where} are not the official {self.dataset} release: the content "
        f"of {', '.join(unofficial)} differs ({self.CONTENT_HASH} of the decompressed bytes). "
        "Use the official files (a recompressed copy is fine), or pass "
        "--allow-unofficial-data true to prepare generated or edited data"
      )

  def _check_labels(self, split: str, labels: np.ndarray) -> None:
    bad = (labels < 0) | (labels >= len(self.CLASS_NAMES))
    if bad.any():
      index = int(np.argmax(bad))
      raise DatasetUnavailableError(
        f"the raw {split} labels of {self.dataset} hold {int(labels[index])} at example "
        f"{index}, outside 0..{len(self.CLASS_NAMES) - 1}: the raw files are damaged or "
        "not this data set"
      )

  def check_prepared(self) -> None:
    """Refuses prepared data not made from this data set's official raw content.

    Prepared data from unofficial content passes with ``allow_unofficial``.

    Raises:
      DatasetUnavailableError: the prepared data's record says otherwise.
    """
    recorded = (self.info.metadata or {}).get("raw_content")
    if recorded == dict(self.CONTENT) or (recorded is not None and self._allow_unofficial):
      return
    if recorded is None:
      what = "records no raw content it was prepared from"
    else:
      what = f"was prepared from raw files that are not the official {self.dataset} release"
    raise DatasetUnavailableError(
      f"the prepared data set {self.dataset} in {self.data_dir} {what}: pass "
      f"--allow-unofficial-data true to use it anyway, or delete {self.data_dir} to prepare "
      "it again from the official raw files"
    )

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray) -> Iterator:
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
      yield index, {"image": image, "label": label}

  @abc.abstractmethod
  def _decompress(self, files: Mapping[str, pathlib.Path]) -> dict[str, bytes]:
    """The decompressed bytes of each raw member (the keys of ``CONTENT``)."""

  @abc.abstractmethod
  def _parse(self, contents: Mapping[str, bytes]) -> dict[str, Arrays]:
    """``{split: (images, labels)}`` from the decompressed members."""

  def _find_raw(self, raw_dir: pathlib.Path) -> dict[str, pathlib.Path] | None:
    """The raw files in ``raw_dir`` by file name, or ``None`` if any is missing."""
    files = {name: raw_dir / name for name in self.SHA256}
    return files if all(path.is_file() for path in files.values()) else None

  def _raw_files_description(self) -> str:
    """The raw files a user can provide, in words."""
    return ", ".join(self.SHA256)

  def _raw_files(self, download_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """The raw files: from the raw-data folder, else downloaded and verified."""
    if self._raw_dir and (files := self._find_raw(pathlib.Path(self._raw_dir))):
      return files
    try:
      return {
        name: _download(f"{self._url.rstrip('/')}/{name}", download_dir / name, sha256)
        for name, sha256 in self.SHA256.items()
      }
    except OSError as e:  # no network, HTTP errors, unwritable download folder
      raise DatasetUnavailableError(self._unavailable_message(e)) from e

  def _unavailable_message(self, cause: Exception) -> str:
    dataset = self.name.removeprefix("pathprox_")
    searched = f" (not found in {self._raw_dir})" if self._raw_dir else ""
    return (
      f"data set {dataset!r} is not prepared in {self.data_dir_root} and its raw files could "
      f"not be downloaded from {self._url} ({cause}). Either run with internet access, which "
      f"downloads them (set ${URL_ENV} to use a mirror), or put the raw files "
      f"{self._raw_files_description()} in a folder and pass it as --raw-data-dir or "
      f"${RAW_DIR_ENV}{searched}."
    )


def _download(url: str, path: pathlib.Path, sha256: str) -> pathlib.Path:
  """Downloads ``url`` to ``path`` unless there already; only a verified file is kept.

  The check is ours, by file name: TFDS keys checksums by URL, so a file from a
  mirror or a test server would go unchecked.
  """
  if path.is_file():  # only verified files are ever moved there
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + ".incomplete")
  digest = hashlib.sha256()
  try:
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as f:
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        f.write(chunk)
    if digest.hexdigest() != sha256:
      raise DatasetUnavailableError(
        f"{url} has sha256 {digest.hexdigest()}, expected {sha256} for {path.name}: the "
        "download is corrupted or not the expected file, and was discarded."
      )
    partial.replace(path)
  finally:
    partial.unlink(missing_ok=True)
  return path


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


BUILDERS: dict[str, type[RawFilesBuilder]] = {
  "mnist": PathproxMnist,
  "fashion_mnist": PathproxFashionMnist,
  "cifar10": PathproxCifar10,
}
DATASETS = tuple(BUILDERS)


def builder(name: str, **kwargs: Any) -> RawFilesBuilder:
  """The TFDS builder of a data set by its experiments name.

  Args:
    name: one of :data:`DATASETS`.
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
    name: one of :data:`DATASETS` (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``).
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
