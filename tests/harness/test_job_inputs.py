"""Every member, seed, flag and run-folder path of a job is checked before anything is written.

Each bad input is refused through the real command line: exit code 2, one line on stderr,
and the folders exactly as they were. Sweep members never share a folder, and each is
locked as a single run's is.
"""

import json
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import REPO, flags
from test_experiments import wait_for_rows

from experiments import cli, compact, compare, plot, sweep


def tree(folder):
  """Every path under ``folder``: a file's bytes, ``None`` for a folder."""
  return {
    str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
    for p in sorted(folder.rglob("*"))
  }


def refused(code, capsys, phrase):
  """Asserts exit code 2 and exactly one line on stderr, an error holding ``phrase``."""
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.count("\n") == 1 and err.startswith("error: ") and phrase in err, err


@pytest.mark.slow  # trains a sweep
def test_members_whose_weight_decays_print_alike_get_their_own_folders(raw_mnist, tmp_path):
  folder = tmp_path / "s"
  argv = ["mnist_subset_mlp", "--seeds", "0", "--weight-decays", "0.0001,0.00010000001",
          *flags(raw_mnist, tmp_path, total_iter=10, log_freq=10), "--workdir", folder]  # fmt: skip
  assert sweep.main(argv) == 0
  names = sorted(p.name for p in folder.iterdir())
  assert names == ["wd0.0001-seed0", "wd0.00010000001-seed0"]
  for name, weight_decay in zip(names, (0.0001, 0.00010000001), strict=True):
    assert json.loads((folder / name / "config.json").read_text())["weight_decay"] == weight_decay
    rows = (folder / name / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [0, 10]


@pytest.mark.parametrize(
  "seeds, weight_decays, phrase",
  [
    ("0,0", "", "--seeds: '0,0' repeats a value"),
    ("0", "1e-4,0.0001", "--weight-decays: '1e-4,0.0001' repeats a value"),
    ("", "", "--seeds: '' lists no seed"),
    (",", "", "--seeds: ',' lists no seed"),
  ],
)
def test_members_with_one_key_are_refused(seeds, weight_decays, phrase, tmp_path, capsys):
  argv = ["mnist_subset_mlp", "--seeds", seeds, "--workdir", str(tmp_path / "s")]
  refused(sweep.main([*argv, "--weight-decays", weight_decays]), capsys, phrase)
  assert not list(tmp_path.iterdir())


def hold_lock(folder):
  """Another process holding ``folder``'s run lock (as a running sweep does), once it holds it."""
  code = (
    "import sys; from experiments.workdir_lock import WorkdirLock; "
    "WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()"
  )
  holder = subprocess.Popen(
    [sys.executable, "-c", code, str(folder)],
    cwd=REPO,
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline() == "held\n"
  return holder


def test_a_sweep_takes_each_members_lock(raw_mnist, tmp_path, capsys):
  folder = tmp_path / "s"
  holder = hold_lock(folder / "seed1")
  try:
    before = tree(tmp_path)
    argv = ["mnist_subset_mlp", "--seeds", "0,1", *flags(raw_mnist, tmp_path), "--workdir", folder]
    phrase = f"{folder / 'seed1'} is in use by another run (pid {holder.pid} on "
    refused(sweep.main(argv), capsys, phrase)
    assert tree(tmp_path) == before
  finally:
    holder.communicate("")


@pytest.mark.slow  # a subprocess
def test_a_single_run_on_a_member_of_a_running_sweep_is_refused(raw_mnist, tmp_path, capsys):
  common = flags(raw_mnist, tmp_path, total_iter=10**6, log_freq=100, save_freq=10**5)
  folder, member = tmp_path / "s", tmp_path / "s" / "seed0"
  with open(tmp_path / "s.err", "w") as err:
    process = subprocess.Popen(
      [sys.executable, "-m", "experiments.sweep", "mnist_subset_mlp", "--seeds", "0,1", *common,
       "--workdir", folder],
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=err,
    )  # fmt: skip
    try:
      wait_for_rows(process, member, 1)
      phrase = f"{member} is in use by another run (pid {process.pid} on "
      for resume in ([], ["--resume"]):
        code = cli.main("mnist_subset_mlp", [*common, "--workdir", str(member), *resume])
        refused(code, capsys, phrase)
    finally:
      process.send_signal(signal.SIGINT)
      assert process.wait() == 130


@pytest.mark.parametrize("seed", ["-1", "4294967296", str(2**64 + 5), "1.5", "x"])
def test_seeds_outside_32_bits_are_refused(seed, tmp_path, capsys):
  code = cli.main("mnist_subset_mlp", ["--seed", seed, "--workdir", str(tmp_path / "r")])
  refused(code, capsys, "--seed")
  argv = ["mnist_subset_mlp", "--seeds", f"0,{seed}", "--workdir", str(tmp_path / "s")]
  refused(sweep.main(argv), capsys, "--seeds takes integers in [0, 2**32) (JAX keys hold 32 bits)")
  assert not list(tmp_path.iterdir())


def test_the_largest_seed_is_accepted():
  config, _, _ = cli.parse_args("mnist_subset_mlp", ["--seed", str(2**32 - 1)])
  assert config.seed == 2**32 - 1


def wrong_kind(workdir, entry):
  """Puts a file where the run keeps a folder, or a folder where it keeps a file."""
  path = workdir / entry
  if path.is_dir():
    shutil.rmtree(path)
    path.write_text("not a folder")
  else:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize("resume", [[], ["--resume"]], ids=["new", "resume"])
@pytest.mark.parametrize(
  "entry, phrase",
  [
    ("checkpoints", "checkpoints is a file where the run keeps a folder"),
    ("metrics.jsonl", "metrics.jsonl is a folder where the run keeps a file"),
    ("config.json", "config.json is a folder where the run keeps a file"),
  ],
)
def test_run_folder_entries_of_the_wrong_kind_are_refused(
  entry,
  phrase,
  resume,
  finished_run,
  tmp_path,
  capsys,
):
  workdir, argv = finished_run
  shutil.copytree(workdir, tmp_path / "run")
  wrong_kind(tmp_path / "run", entry)
  before = tree(tmp_path)
  code = cli.main(
    "mnist_subset_mlp", [*map(str, argv), "--workdir", str(tmp_path / "run"), *resume]
  )
  refused(code, capsys, phrase + "; move it aside or choose another --workdir")
  assert tree(tmp_path) == before


@pytest.mark.parametrize("resume", [[], ["--resume"]], ids=["new", "resume"])
def test_a_workdir_that_is_a_file_is_refused(resume, tmp_path, capsys):
  (tmp_path / "s").mkdir()
  (tmp_path / "s" / "seed0").write_text("not a folder")
  before = tree(tmp_path)
  code = cli.main("mnist_subset_mlp", ["--workdir", str(tmp_path / "s" / "seed0"), *resume])
  refused(code, capsys, "seed0 is a file, not a directory")
  argv = ["mnist_subset_mlp", "--seeds", "0", "--workdir", str(tmp_path / "s"), *resume]
  refused(sweep.main(argv), capsys, "seed0 is a file, not a directory")
  assert tree(tmp_path) == before


def test_sweep_members_entries_of_the_wrong_kind_are_refused(tmp_path, capsys):
  (tmp_path / "s" / "seed1").mkdir(parents=True)
  (tmp_path / "s" / "seed1" / "checkpoints").write_text("not a folder")
  before = tree(tmp_path)
  argv = ["mnist_subset_mlp", "--seeds", "0,1", "--workdir", str(tmp_path / "s"), "--resume"]
  refused(sweep.main(argv), capsys, "checkpoints is a file where the run keeps a folder")
  assert tree(tmp_path) == before


@pytest.mark.parametrize(
  "argv, phrase",
  [
    (["--momentum", "nan"], "--momentum must be a finite number >= 0, got nan"),
    (["--momentum", "inf"], "--momentum must be a finite number >= 0, got inf"),
    (["--weight-decay=-inf"], "must be a finite number >= 0, got -inf"),
    (["--lr-decay", "nan"], "--lr-decay must be a finite number > 0, got nan"),
    (["--lr", "1e999"], "--lr must be a finite number > 0, got inf"),
    (["--lr-milestones", "1,inf"], "--lr-milestones must be a finite number, got inf"),
    (["--lr-milestones", "1,x"], "--lr-milestones: 'x' is not a valid float"),
  ],
)
def test_experiment_float_flags_refuse_nan_and_inf(argv, phrase, tmp_path, capsys):
  refused(cli.main("mnist_subset_mlp", [*argv, "--workdir", str(tmp_path / "r")]), capsys, phrase)
  args = ["mnist_subset_mlp", "--seeds", "0", *argv, "--workdir", str(tmp_path / "s")]
  refused(sweep.main(args), capsys, phrase)
  refused(compare.main([*args[:1], *argv, "--workdir", str(tmp_path / "c")]), capsys, phrase)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "x"])
def test_sweep_weight_decays_refuse_nan_and_inf(value, tmp_path, capsys):
  argv = ["mnist_subset_mlp", "--seeds", "0", "--weight-decays", f"1e-4,{value}"]
  code = sweep.main([*argv, "--workdir", str(tmp_path / "s")])
  refused(code, capsys, "--weight-decays")
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1e-3"])
def test_compact_atol_refuses_nan_before_reading_the_run(
  value,
  finished_run,
  tmp_path,
  capsys,
):
  # NaN passed the old `atol < 0` test: every unit counted as switched off, and the error
  # blamed the run ("no units left").
  workdir, _ = finished_run
  before = tree(workdir)
  code = compact.main([str(workdir), f"--atol={value}", "--out", str(tmp_path / "out")])
  refused(code, capsys, f"--atol must be a finite number >= 0, got {float(value)}")
  assert tree(workdir) == before and not list(tmp_path.iterdir())


def test_plot_steps_refuse_nan(finished_run, tmp_path, capsys):
  workdir, _ = finished_run
  code = plot.main([str(workdir), "--out", str(tmp_path / "out"), "--at", "10,nan"])
  refused(code, capsys, "--at: expected iterations")
  assert not list(tmp_path.iterdir())


def test_an_mlp_without_a_hidden_layer_is_refused(tmp_path, capsys):
  argv = ["--features", "10", "--relu", "true", "--workdir", str(tmp_path / "r")]
  refused(cli.main("mnist_mlp", argv), capsys, "--features: an MLP needs at least one hidden layer")
  assert not list(tmp_path.iterdir())
