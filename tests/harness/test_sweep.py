"""Sweeps: every member is the single run with its seed and weight decay, to round-off.

The loop is the single run's: interrupts, checkpoint fallback and resume checks hold
for every member at once, and a member that diverges stops alone.
"""

import json
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import REPO, flags
from test_experiments import assert_rows_close, assert_same_run, wait_for_rows
from test_resume import DIVERGE, snapshot, truncate_arrays

from experiments import checkpointing, cli, sweep, workdir_lock

# One xdist worker runs this file (--dist loadgroup): finished_sweep is made once.
pytestmark = pytest.mark.xdist_group("sweep")

TINY = ["--features", "32,32,32,32,32,10", "--train-per-class", "20", "--batch-size", "40",
        "--eval-batch-size", "200", "--lr", "0.05", "--progress", "false", "--total-iter", "200",
        "--log-freq", "100", "--save-freq", "100"]  # fmt: skip


def read_rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_run(raw_mnist, tmp_path_factory):
  """The single run that sweep member wd0.01-seed1 equals, and the data flags it used."""
  tmp = tmp_path_factory.mktemp("single")
  data = ["--raw-data-dir", str(raw_mnist), "--data-dir", str(tmp / "tfds"),
          "--allow-unofficial-data", "true"]  # fmt: skip
  flags = [*TINY, *data, "--seed", "1", "--weight-decay", "1e-2", "--workdir", str(tmp / "run")]
  assert cli.main("mnist_subset_mlp", flags) == 0
  return tmp / "run", data


@pytest.mark.slow  # trains sweeps (and single_run)
@pytest.mark.parametrize("member_loop", ["vmap", "map"])
def test_members_equal_single_runs(single_run, tmp_path, member_loop):
  single, data = single_run
  argv = ["mnist_subset_mlp", "--seeds", "0,1", "--weight-decays", "1e-4,1e-2", *TINY, *data,
          "--member-loop", member_loop]  # fmt: skip
  assert sweep.main([*argv, "--workdir", str(tmp_path / "sweep")]) == 0
  names = sorted(p.name for p in (tmp_path / "sweep").iterdir())
  assert names == ["wd0.0001-seed0", "wd0.0001-seed1", "wd0.01-seed0", "wd0.01-seed1"]

  member = tmp_path / "sweep" / "wd0.01-seed1"
  got = read_rows(member)
  assert [r["step"] for r in got] == [0, 100, 200]
  assert_rows_close(got, read_rows(single), rtol=2e-4)
  config = json.loads((member / "config.json").read_text())
  assert (config["seed"], config["weight_decay"]) == (1, 1e-2)
  # The members differ: another seed, another λ.
  other = read_rows(tmp_path / "sweep" / "wd0.01-seed0")[-1]
  assert other["train_loss"] != got[-1]["train_loss"]
  assert read_rows(tmp_path / "sweep" / "wd0.0001-seed1")[-1]["path_norm"] > got[-1]["path_norm"]


@pytest.mark.slow  # trains a sweep and resumes it
def test_rerun_without_resume_is_refused(raw_mnist, tmp_path, capsys):
  data = ["--raw-data-dir", str(raw_mnist), "--data-dir", str(tmp_path / "tfds"),
          "--allow-unofficial-data", "true"]  # fmt: skip
  argv = ["mnist_subset_mlp", "--seeds", "3", *TINY, *data, "--workdir", str(tmp_path / "s")]
  argv[argv.index("--total-iter") + 1] = "100"
  assert sweep.main(argv) == 0
  assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["seed3"]
  assert sweep.main(argv) == 2
  assert "--resume" in capsys.readouterr().err
  longer = [*argv, "--resume", "--total-iter", "200"]
  longer.remove("--total-iter"), longer.remove("100")
  assert sweep.main(longer) == 0
  assert [r["step"] for r in read_rows(tmp_path / "s" / "seed3")] == [0, 100, 200]


def test_a_sweep_folder_in_use_is_refused(raw_mnist, tmp_path, capsys):
  folder = tmp_path / "s"
  argv = ["mnist_subset_mlp", "--seeds", "0", *TINY, "--raw-data-dir", str(raw_mnist),
          "--allow-unofficial-data", "true", "--workdir", str(folder)]  # fmt: skip
  with workdir_lock.WorkdirLock(folder):
    assert sweep.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert "is in use by another run" in err and len(err.splitlines()) == 1
  assert not folder.exists()  # nothing was written, and the test's lock left no file


@pytest.mark.parametrize("seeds", ["0,x", "1,1"])
def test_bad_seeds_are_one_line_errors(seeds, tmp_path, capsys):
  assert sweep.main(["mnist_subset_mlp", "--seeds", seeds, "--workdir", str(tmp_path)]) == 2
  assert capsys.readouterr().err.startswith("error: --seeds")


@pytest.fixture(scope="module")
def finished_sweep(raw_mnist, tmp_path_factory):
  """Baseline (wd) seeds 0 and 1 for 20 steps, checkpoints at 10 and 20 (tests copy it)."""
  tmp = tmp_path_factory.mktemp("finished_sweep")
  argv = ["mnist_subset_mlp", "--seeds", "0,1", *flags(raw_mnist, tmp), "--method", "wd"]
  assert sweep.main([*argv, "--workdir", tmp / "s"]) == 0
  return tmp / "s", argv


def copy_of(finished_sweep, tmp_path):
  folder, argv = finished_sweep
  shutil.copytree(folder, tmp_path / "s")
  return tmp_path / "s", [*argv, "--workdir", tmp_path / "s"]


@pytest.mark.slow  # trains a sweep
def test_a_diverged_member_stops_alone_and_stays_stopped_on_resume(
  finished_sweep, tmp_path, capsys
):
  # λ = 1e9 makes the baseline's decay step multiply the kernels by about -5e7: NaN in 2 steps.
  # The other member, λ = 1e-4 (the config's), is member seed0 of the finished sweep.
  reference, argv = finished_sweep
  folder = tmp_path / "s"
  argv = [*argv, "--seeds", "0", "--weight-decays", "1e-4,1e9", "--workdir", folder]
  assert sweep.main(argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  bad, good = folder / "wd1e+09-seed0", folder / "wd0.0001-seed0"
  step = json.loads((bad / "config.json").read_text())["diverged"]["step"]
  assert json.loads((bad / "config.json").read_text())["diverged"] == {"step": step, "loss": "nan"}
  assert 0 < step < 10
  assert f"wd1e+09-seed0: the training loss became nan at step {step}; this member stopped, no " \
    "checkpoint was saved" in err  # fmt: skip
  summary = f"error: 1 of 2 members diverged (wd1e+09-seed0 at step {step}); "
  assert err[-1].startswith(summary) and "lower --lr" in err[-1]
  assert [r["step"] for r in read_rows(bad)] == [0]
  assert checkpointing.latest_step(bad / "checkpoints") is None
  assert checkpointing.latest_step(good / "checkpoints") == 20
  assert_rows_close(read_rows(good), read_rows(reference / "seed0"), rtol=2e-4)

  # Resumed, the diverged member is left out and untouched; the other goes on.
  before = snapshot(bad)
  assert sweep.main([*argv, "--total-iter", "30", "--resume"]) == 1
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith(summary)
  assert snapshot(bad) == before
  assert [r["step"] for r in read_rows(good)] == [0, 10, 20, 30]


@pytest.mark.slow  # trains a sweep
@pytest.mark.parametrize(
  "total_iter, why, step",
  [(11, "the evaluated training loss is nan", 11), (30, "the training loss became nan", 12)],
  ids=["in-the-final-evaluation", "mid-run"],
)
def test_when_every_member_diverges_the_sweep_stops(
  total_iter, why, step, raw_mnist, tmp_path, capsys
):
  folder = tmp_path / "s"
  argv = ["mnist_subset_mlp", "--seeds", "0,1", *flags(raw_mnist, tmp_path, total_iter=total_iter),
          *DIVERGE, "--workdir", folder]  # fmt: skip
  assert sweep.main(argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  for name in ("seed0", "seed1"):
    kept = "its last good checkpoint (step 10) is kept"
    assert f"{name}: {why} at step {step}; this member stopped, {kept}" in err
    config = json.loads((folder / name / "config.json").read_text())
    assert config["diverged"] == {"step": step, "loss": "nan"}
    assert checkpointing.latest_step(folder / name / "checkpoints") == 10
    rows = read_rows(folder / name)  # as a single run's: the NaN evaluation is logged
    assert [r["step"] for r in rows] == [0, 10, 11][: 3 if total_iter == 11 else 2]
  summary = f"error: 2 of 2 members diverged (seed0 at step {step}, seed1 at step {step}). Start"
  assert err[-1].startswith(summary)
  before = snapshot(folder)
  assert sweep.main([*argv, "--resume"]) == 1
  assert capsys.readouterr().err.strip().splitlines()[-1] == err[-1]
  assert snapshot(folder) == before


@pytest.mark.slow  # a subprocess
def test_interrupted_sweep_saves_every_member_at_one_step_and_resumes_identically(
  raw_mnist, tmp_path
):
  common = flags(raw_mnist, tmp_path, total_iter=10**6, log_freq=100, save_freq=10**5)
  argv = ["mnist_subset_mlp", "--seeds", "0,1", *common]
  folder = tmp_path / "s"
  with open(tmp_path / "s.err", "w") as err:
    process = subprocess.Popen(
      [sys.executable, "-m", "experiments.sweep", *argv, "--workdir", folder],
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=err,
    )
    wait_for_rows(process, folder / "seed1", 2)
    process.send_signal(signal.SIGINT)
    assert process.wait() == 130
  prefix = "interrupted at step "
  (line,) = [e for e in (tmp_path / "s.err").read_text().splitlines() if e.startswith(prefix)]
  step = int(line[len(prefix) :].split(";")[0])
  assert "; checkpoint saved; resume with: python -m experiments.sweep mnist_subset_mlp " in line
  for name in ("seed0", "seed1"):
    assert checkpointing.latest_step(folder / name / "checkpoints") == step > 100
  command = shlex.split(line.split("resume with: ")[1])
  assert command[:3] == ["python", "-m", "experiments.sweep"] and command[-1] == "--resume"
  end = ["--total-iter", str(step + 50)]
  assert sweep.main(command[3:] + end) == 0
  reference = tmp_path / "uninterrupted"
  assert sweep.main([*argv, *end, "--workdir", reference]) == 0
  for name in ("seed0", "seed1"):
    assert_same_run(folder / name, reference / name)


@pytest.mark.slow  # trains a sweep
def test_a_corrupt_checkpoint_in_one_member_resumes_all_from_a_common_step(
  finished_sweep, tmp_path, capsys
):
  folder, argv = copy_of(finished_sweep, tmp_path)
  truncate_arrays(folder / "seed0" / "checkpoints" / "20")
  assert sweep.main([*argv, "--resume"]) == 0  # from step 10 back to 20
  warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 2 and all(w.endswith("resuming from step 10") for w in warnings)
  assert f"checkpoint 20 in {folder / 'seed0' / 'checkpoints'} is unreadable (" in warnings[0]
  assert f"checkpoint 20 in {folder / 'seed1' / 'checkpoints'} is readable, but " in warnings[1]
  assert (folder / "seed0" / "checkpoints-unreadable" / "20").is_dir()
  assert (folder / "seed1" / "checkpoints-set-aside" / "20").is_dir()
  for name in ("seed0", "seed1"):
    assert [r["step"] for r in read_rows(folder / name)] == [0, 10, 20]
    assert_same_run(folder / name, finished_sweep[0] / name)


@pytest.mark.slow  # trains a sweep (finished_sweep)
def test_resume_refuses_changes_in_one_line_and_touches_nothing(finished_sweep, tmp_path, capsys):
  folder, argv = copy_of(finished_sweep, tmp_path)
  before = snapshot(folder)
  assert sweep.main([*argv, "--lr", "0.1", "--resume"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"{folder / 'seed0'} was run with --lr 0.05 (here 0.1)" in err
  assert sweep.main([*argv, "--total-iter", "15", "--resume"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--total-iter 15 is below step 20 of the checkpoint" in err
  assert snapshot(folder) == before
  shutil.rmtree(folder / "seed1" / "checkpoints" / "20")  # as if the sweep died between saves
  before = snapshot(folder)
  assert sweep.main([*argv, "--resume"]) == 2
  err = capsys.readouterr().err
  assert (
    err.count("\n") == 1
    and "latest checkpoints are at different steps (seed0: 20, seed1: 10)" in err
  )
  assert snapshot(folder) == before
