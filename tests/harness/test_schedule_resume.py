"""Learning-rate schedules through the command line: a resume never changes the run's rates,
milestones on one step are refused, and config.json records only the keys that apply.

Tiny MLPs on generated data: 5 steps per epoch, so epoch 2 is step 10.
"""

import json
import shutil

import pytest
from conftest import flags, read_rows

from experiments import cli

# One xdist worker runs this file (--dist loadgroup): its runs are made once.
pytestmark = pytest.mark.xdist_group("schedule_resume")


def run(argv, capsys):
  """``cli.main`` of mnist_subset_mlp: ``(exit code, stderr)``."""
  code = cli.main("mnist_subset_mlp", [str(a) for a in argv])
  return code, capsys.readouterr().err


def snapshot(folder):
  """Every file under ``folder`` with its bytes."""
  return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(raw_mnist, tmp_path_factory):
  """20-step runs (checkpoints at 10 and 20): a cosine one, and a step one with milestones at
  steps 10 and 25 (epochs 2 and 5), the second past its end."""
  tmp = tmp_path_factory.mktemp("schedules")
  made = {}
  for name, schedule in (
    ("cosine", ["--lr-schedule", "cosine", "--warmup-iter", "2"]),
    ("step", ["--lr-milestones", "2,5", "--lr-decay", "0.5"]),
  ):
    argv = flags(raw_mnist, tmp, workdir=tmp / name) + schedule
    assert cli.main("mnist_subset_mlp", argv) == 0
    made[name] = tmp / name
  return made


def copy_of(runs, name, tmp_path):
  shutil.copytree(runs[name], tmp_path / name)
  return tmp_path / name


@pytest.mark.slow
@pytest.mark.parametrize(
  "name, total_iter, message",
  [
    (
      "cosine",
      40,
      "--total-iter 40 (the run's is 20) changes the learning rate at step 3, "
      "within the run's planned steps",
    ),
    ("cosine", 15, "--total-iter 15 (the run's is 20) changes the learning rate at step 3"),
    (
      "step",
      30,
      "changes the learning rate at step 25, past the run's planned end: 0.025 -> "
      "0.0125 (a milestone lies past the run's planned end)",
    ),
  ],  # fmt: skip
  ids=["cosine-longer", "cosine-shorter", "step-past-a-milestone"],
)
def test_resume_that_changes_the_learning_rate_is_refused_and_writes_nothing(
  runs, tmp_path, capsys, name, total_iter, message
):
  workdir = copy_of(runs, name, tmp_path)
  if total_iter < 20:  # resume from step 10, before the new end
    shutil.rmtree(workdir / "checkpoints" / "20")
  before = snapshot(workdir)
  code, err = run(["--workdir", workdir, "--resume", "--total-iter", total_iter], capsys)
  assert code == 2 and err.count("\n") == 1 and err.startswith("error: --resume: ")
  assert message in err and "start a new run in another --workdir" in err
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_step_schedule_extends_up_to_its_next_milestone(runs, tmp_path, capsys):
  workdir = copy_of(runs, "step", tmp_path)
  code, _ = run(["--workdir", workdir, "--resume", "--total-iter", "24", "--log-freq", "2"], capsys)
  assert code == 0
  rows = read_rows(workdir)
  assert [r["step"] for r in rows] == [0, 10, 20, 22, 24]
  assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.025, 0.025, 0.025, 0.025])


def test_changed_milestones_are_refused_on_resume(runs, tmp_path, capsys):
  workdir = copy_of(runs, "step", tmp_path)
  before = snapshot(workdir)
  code, err = run(["--workdir", workdir, "--resume", "--lr-milestones", "2,6"], capsys)
  assert code == 2 and err.count("\n") == 1
  assert "--lr-milestones 2.0,5.0 (here 2.0,6.0)" in err
  assert snapshot(workdir) == before


@pytest.mark.parametrize("milestones", ["1,1.1", "2,2"])
def test_milestones_on_one_step_are_refused(runs, raw_mnist, tmp_path, capsys, milestones):
  workdir = tmp_path / "run"
  prepared = runs["step"].parent  # its data set, prepared already
  code, err = run(flags(raw_mnist, prepared, workdir=workdir, lr_milestones=milestones), capsys)
  assert code == 2 and err.count("\n") == 1
  assert "both fall on step" in err and "give each milestone its own step" in err
  assert not workdir.exists()


def test_keys_a_schedule_does_not_read_are_not_recorded_and_refused_as_flags(
  runs, raw_mnist, tmp_path, capsys
):
  cosine = json.loads((runs["cosine"] / "config.json").read_text())
  step = json.loads((runs["step"] / "config.json").read_text())
  assert "lr_milestones" not in cosine and "lr_decay" not in cosine
  assert step["lr_milestones"] == [2.0, 5.0] and step["lr_decay"] == 0.5
  assert "val_size" not in step  # a subset split's run reads train_per_class
  argv = flags(raw_mnist, tmp_path, workdir=tmp_path / "run", lr_schedule="cosine", lr_decay=0.5)
  code, err = run(argv, capsys)
  assert code == 2 and err == "error: --lr-decay applies only to --lr-schedule step\n"
  assert not (tmp_path / "run").exists()
  with pytest.raises(SystemExit):
    cli.main("fashion_mnist_vit_adamw", ["--help"])  # a cosine config
  shown = capsys.readouterr().out
  assert "--lr-schedule" in shown and "--lr-milestones" not in shown and "--lr-decay" not in shown
