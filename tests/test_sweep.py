"""Sweeps: every member is the single run with its seed and weight decay, to round-off."""

import json

import numpy as np
import pytest

from experiments import cli, sweep, workdir_lock

TINY = ["--features", "32,32,32,32,32,10", "--train-per-class", "20", "--batch-size", "40",
        "--eval-batch-size", "200", "--lr", "0.05", "--progress", "false", "--total-iter", "200",
        "--log-freq", "100", "--save-freq", "100"]  # fmt: skip


def read_rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_members_equal_single_runs(raw_mnist, tmp_path):
  data = ["--raw-data-dir", str(raw_mnist), "--data-dir", str(tmp_path / "tfds"),
          "--allow-unofficial-data", "true"]  # fmt: skip
  argv = ["mnist_subset_mlp", "--seeds", "0,1", "--weight-decays", "1e-4,1e-2", *TINY, *data]
  assert sweep.main([*argv, "--workdir", str(tmp_path / "sweep")]) == 0
  names = sorted(p.name for p in (tmp_path / "sweep").iterdir())
  assert names == ["wd0.0001-seed0", "wd0.0001-seed1", "wd0.01-seed0", "wd0.01-seed1"]
  single = tmp_path / "single"
  flags = [*TINY, *data, "--seed", "1", "--weight-decay", "1e-2", "--workdir", str(single)]
  assert cli.main("mnist_subset_mlp", flags) == 0

  member = tmp_path / "sweep" / "wd0.01-seed1"
  expected, got = read_rows(single), read_rows(member)
  assert [r["step"] for r in got] == [0, 100, 200]
  for want, have in zip(expected, got, strict=True):
    for key in want:
      if key not in ("wall_time", "method"):
        np.testing.assert_allclose(have[key], want[key], rtol=2e-4, atol=1e-6, err_msg=key)
  config = json.loads((member / "config.json").read_text())
  assert (config["seed"], config["weight_decay"]) == (1, 1e-2)
  # The members differ: another seed, another λ.
  other = read_rows(tmp_path / "sweep" / "wd0.01-seed0")[-1]
  assert other["train_loss"] != got[-1]["train_loss"]
  assert read_rows(tmp_path / "sweep" / "wd0.0001-seed1")[-1]["path_norm"] > got[-1]["path_norm"]


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
