"""Test session set-up: eight fake CPU devices, a compilation cache, small generated data sets.

Real MNIST (the four raw IDX files) is found through ``$PATHPROX_RAW_DATA_DIR`` first,
then in ``../shared/data/mnist`` next to the repository. Tests that need it take the
``real_mnist`` fixture: they skip without it, but under ``CI=true`` they fail.
"""

import atexit
import json
import os
import shutil
import tempfile

# Compiling is most of the tests' time, and their programs are small. The suite compiles
# without most of XLA's optimisations, without the CPU's fusion emitters and in one codegen
# part: the MLP's and the ViT's jitted init and gradient step compile in 2.2–2.6 s instead of
# 9.3 s (5.2–5.4 s with the optimisations off alone). What the tests check does not depend on
# it; every process they start inherits it, and `users_env()` is a process's environment
# without it (the smoke runs on real data, whose thresholds hold for the default compiler).
FAST_COMPILE_FLAGS = "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
COMPILE_SETTINGS = ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS")
if "PYTEST_XDIST_WORKER" not in os.environ:  # the session's first process: the user's settings
  os.environ["PATHPROX_TESTS_USER_ENV"] = json.dumps(
    {k: os.environ.get(k) for k in COMPILE_SETTINGS}
  )
USER_ENV = json.loads(os.environ["PATHPROX_TESTS_USER_ENV"])


def xla_flags(devices: int, fast_compile: bool = True) -> str:
  """The suite's ``XLA_FLAGS`` for a process with ``devices`` CPU devices."""
  fast = FAST_COMPILE_FLAGS if fast_compile else ""
  user = USER_ENV["XLA_FLAGS"] or ""
  return f"{user} --xla_force_host_platform_device_count={devices} {fast}".strip()


def users_env() -> dict[str, str]:
  """This process's environment with the user's compile settings (and eight CPU devices)."""
  env = {**os.environ, "XLA_FLAGS": xla_flags(8, fast_compile=False)}
  env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS")
  if USER_ENV["JAX_DISABLE_MOST_OPTIMIZATIONS"] is not None:
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = USER_ENV["JAX_DISABLE_MOST_OPTIMIZATIONS"]
  return env


os.environ["XLA_FLAGS"] = xla_flags(8)
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")

# One persistent compilation cache for the session, its xdist workers and every process its
# tests start (they inherit the environment): the tests compile the same small programs again
# and again, in this process and in each `python -m experiments...` they start. An entry is
# keyed by the program, the compile options and the JAX version, so a hit is the executable the
# compiler would have built. The folder is new for each session, so nothing compiled elsewhere is
# read back; the process that made it (the xdist controller, or the only process) removes it.
# No size limit: with one, JAX locks the folder and reads every entry's time stamp on each write
# (its LRU eviction), which costs time quadratic in the entries, and the suite writes thousands.
# Without the lock an entry read while another process writes it is torn: JAX then fails to
# decompress it, warns, and compiles the program itself.
if "PYTEST_XDIST_WORKER" not in os.environ:
  COMPILATION_CACHE = tempfile.mkdtemp(prefix="pathprox-jax-tests-compiled-")
  atexit.register(shutil.rmtree, COMPILATION_CACHE, ignore_errors=True)
  os.environ.update(
    JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",  # cache every program, however quick
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",  # and however small
  )

import contextlib  # noqa: E402
import gzip  # noqa: E402
import io  # noqa: E402
import pathlib  # noqa: E402
import pickle  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")  # fmt: skip


def find_real_mnist() -> pathlib.Path:
  """``$PATHPROX_RAW_DATA_DIR`` if set, else ``../shared/data/mnist`` beside the repository."""
  if os.environ.get("PATHPROX_RAW_DATA_DIR"):
    return pathlib.Path(os.environ["PATHPROX_RAW_DATA_DIR"])
  return pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def has_mnist_files(directory: pathlib.Path) -> bool:
  return all((directory / name).is_file() for name in MNIST_FILES)


REAL_MNIST = find_real_mnist()


def pytest_collection_modifyitems(config, items) -> None:
  """Under xdist, the slow tests outside any ``xdist_group`` come first.

  ``--dist loadgroup`` hands out the groups first (the most tests first), then the other tests
  in this order, one at a time to whichever worker is free: with the slow ones first, the quick
  ones fill the end and both workers finish together. Without xdist the order is kept.
  """

  def handed_out_late(item: pytest.Item) -> bool:
    return not item.get_closest_marker("slow") or bool(item.get_closest_marker("xdist_group"))

  if "PYTEST_XDIST_WORKER" in os.environ:
    items.sort(key=handed_out_late)


@pytest.fixture
def real_mnist() -> pathlib.Path:
  """The real MNIST raw files' folder; skips without it, fails without it under ``CI=true``."""
  if not has_mnist_files(REAL_MNIST):
    message = f"real MNIST not found in {REAL_MNIST} (set PATHPROX_RAW_DATA_DIR)"
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(f"CI=true: {message}")
    pytest.skip(message)
  return REAL_MNIST


@pytest.fixture(scope="session")
def real_mnist_data_dir(tmp_path_factory) -> pathlib.Path:
  """A TFDS ``data_dir`` for real MNIST shared by the session: its first user prepares it.

  Preparing the 70,000 images takes about 15 s; the tests that read them share it (on one
  xdist worker: they are in the ``notebooks`` group).
  """
  return tmp_path_factory.mktemp("real_mnist_tfds")


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


REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_MLP = ["--features", "32,32,32,32,32,10", "--train-per-class", "20", "--batch-size", "40",
            "--eval-batch-size", "200", "--lr", "0.05", "--progress", "false"]  # fmt: skip


def flags(raw_dir, tmp_path, **overrides) -> list[str]:
  """Command-line flags of a tiny mnist_subset_mlp run (5 steps per epoch)."""
  values = {"raw-data-dir": raw_dir, "allow-unofficial-data": "true",
            "data-dir": tmp_path / "tfds", "total-iter": 20, "log-freq": 10,
            "save-freq": 10}  # fmt: skip
  values.update({k.replace("_", "-"): v for k, v in overrides.items()})
  return TINY_MLP + [f for k, v in values.items() for f in (f"--{k}", str(v))]


def read_rows(workdir) -> list[dict]:
  """A run's ``metrics.jsonl`` rows."""
  with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def finished_run(raw_mnist, tmp_path_factory) -> tuple[pathlib.Path, list[str]]:
  """``(workdir, flags)`` of one finished 20-step tiny run, shared by the whole session.

  The run of ``flags(raw_mnist, ...)`` (PathProx, checkpoints at steps 10 and 20), and its flags
  without ``--workdir``. What it printed is in ``stdout.txt`` beside ``workdir``. Tests only
  read it: one that changes it copies it first (``shutil.copytree``).
  """
  from experiments import cli

  tmp = tmp_path_factory.mktemp("finished")
  workdir = tmp / "run"
  argv = flags(raw_mnist, tmp, workdir=workdir)
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    assert cli.main("mnist_subset_mlp", [str(a) for a in argv]) == 0
  (tmp / "stdout.txt").write_text(printed.getvalue())
  return workdir, argv[: argv.index("--workdir")]


# The toy ViT of the prune tests: two blocks of 4 heads and 16 FFN neurons.
TOY_VIT = ["--num-heads", "4,4", "--mlp-dim", "16,16", "--width", "16", "--head-dim", "4"]


def toy_vit_flags(raw_dir, tmp_path) -> list[str]:
  """Flags of a toy ViT run on generated data (Fashion-MNIST has MNIST's file format)."""
  return ["--raw-data-dir", str(raw_dir), "--allow-unofficial-data", "true", "--data-dir",
          str(tmp_path / "tfds"), "--val-size", "100", "--batch-size", "40",
          "--eval-batch-size", "200", "--progress", "false"]  # fmt: skip


@pytest.fixture(scope="session")
def vit_run(raw_mnist, tmp_path_factory) -> pathlib.Path:
  """A 30-step weight-decay run of the toy ViT, shared by the session (prune and ViT flags).

  Its data set is prepared in ``tfds`` beside it (``toy_vit_flags(raw_mnist, run.parent)``).
  Tests only read it, and write their outputs elsewhere (or beside it).
  """
  from experiments import cli

  tmp = tmp_path_factory.mktemp("vit")
  steps = ["--total-iter", "30", "--log-freq", "30", "--save-freq", "30"]
  argv = ["--workdir", str(tmp / "run"), *toy_vit_flags(raw_mnist, tmp), *TOY_VIT, "--method", "wd",
          *steps]  # fmt: skip
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    assert cli.main("fashion_mnist_vit", argv) == 0
  return tmp / "run"
