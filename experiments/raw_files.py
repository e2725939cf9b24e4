"""Preparing a data set from the raw files of its release: the TFDS builder all data sets share.

A builder prepares its data set from the raw files of the original release, found

1. in the raw-data folder (``raw_dir``, else ``$PATHPROX_RAW_DATA_DIR``), else
2. downloaded from the official address (``url``, else ``$PATHPROX_DATA_URL``,
   else the builder's ``URL``) and checked against the builder's ``SHA256``.

Before anything is prepared, the raw files are identified by their content (see
:mod:`experiments.data` for the rule); :mod:`experiments.releases` holds each release's files.
"""

from __future__ import annotations

import abc
import hashlib
import os
import pathlib
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from experiments.dataset_facts import RAW_DIR_ENV, Arrays, raw_data_dir

URL_ENV = "PATHPROX_DATA_URL"
SPLITS = ("train", "test")
# Every release's builder, by data set name, as experiments.releases defines them (so that
# each can refuse another's files).
RELEASES: dict[str, type[RawFilesBuilder]] = {}


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

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if "CONTENT" in cls.__dict__:  # a release (its files' digests), not a format's base class
      RELEASES[cls.name.removeprefix("pathprox_")] = cls

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
    self._raw_dir = raw_data_dir(raw_dir)
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
      for other, builder in RELEASES.items():
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
