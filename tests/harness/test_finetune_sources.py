"""Fine-tunes that survive their sources, through the command line: compact and prune never
replace an output, a fine-tune resumes without its ``--init-params`` and refuses params of
another model.

The session's tiny MLP run on generated data (5 steps per epoch), copied and compacted once
for the whole module.
"""

import json
import shutil

import pytest
from conftest import flags, read_rows

from experiments import cli, compact, prune

# One xdist worker runs this file (--dist loadgroup): the run is compacted once.
pytestmark = pytest.mark.xdist_group("finetune_sources")


def snapshot(folder):
  """Every file under ``folder`` with its bytes."""
  return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def compacted(finished_run, tmp_path_factory):
  """``(run folder, its compact output)``: a copy of the session's run and its ``RUN/compact``.

  The run's whole folder is copied (its prepared data set too): the tests write beside it.
  """
  tmp = tmp_path_factory.mktemp("finetune")
  shutil.copytree(finished_run[0].parent, tmp, dirs_exist_ok=True)
  run = tmp / "run"
  assert compact.main([str(run), "--repeats", "1"]) == 0
  return run, run / "compact"


def finetune_flags(raw_mnist, compacted, workdir, source, **overrides):
  """A fine-tune of the compact output's model from ``source``, with the run's data."""
  run, out = compacted
  config = json.loads((out / "config.json").read_text())
  widths = ",".join(map(str, config["features"]))
  values = {"workdir": workdir, "features": widths, "init_params": source, **overrides}
  return flags(raw_mnist, run.parent, **values)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["compact", "prune"])
def test_an_existing_output_is_never_replaced(compacted, capsys, command):
  run, out = compacted
  if command == "prune":
    out = run / "prune"
    assert prune.main([str(run), "--keep", "3,3,3", "--repeats", "1"]) == 0
    capsys.readouterr()
  before = snapshot(out)
  main = compact.main if command == "compact" else prune.main
  argv = [str(run), "--repeats", "1"] + (["--keep", "2,2,2"] if command == "prune" else [])
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert (
    err == f"error: {out} exists and is not empty; outputs are never replaced: pass another --out\n"
  )
  assert snapshot(out) == before


@pytest.mark.slow
def test_a_fine_tune_resumes_after_its_source_is_gone(raw_mnist, compacted, tmp_path):
  source = tmp_path / "source"
  shutil.copytree(compacted[1], source)
  workdir = tmp_path / "finetune"
  argv = finetune_flags(raw_mnist, compacted, workdir, source / "params", total_iter=10)
  assert cli.main("mnist_subset_mlp", argv) == 0
  assert (workdir / "init-params").is_dir()  # its copy of what it started from
  shutil.rmtree(source)
  assert (
    cli.main("mnist_subset_mlp", ["--workdir", str(workdir), "--resume", "--total-iter", "20"]) == 0
  )
  assert [r["step"] for r in read_rows(workdir)] == [0, 10, 20]
  record = json.loads((workdir / "config.json").read_text())
  assert record["init_params"] == str(source / "params")  # the record keeps the source's name


def test_init_params_of_another_model_is_refused(raw_mnist, compacted, tmp_path, capsys):
  workdir = tmp_path / "finetune"
  source = compacted[1] / "params"
  relu = "true,true,true,true,true,false"  # the compact model's widths, other activations
  argv = finetune_flags(raw_mnist, compacted, workdir, source, relu=relu)
  assert cli.main("mnist_subset_mlp", argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"error: --init-params {source} was saved from ")
  assert "--relu True,False,True,False,True,False (here True,True,True,True,True,False)" in err
  assert not workdir.exists()
