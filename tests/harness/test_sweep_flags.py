"""Every command of the harness takes flags by their exact names: no prefix stands for a flag.

argparse's default reads a prefix as the flag it starts (``--seed 3`` as the sweep's
``--seeds 3``, ``--work`` as ``--workdir``). Here each is one line, exit code 2, with
nothing written; the first case runs the real command line.
"""

import subprocess
import sys

import pytest
from conftest import REPO

from experiments import cli, compact, compare, plot, prune, sweep


def no_data(tmp_path):
  """Data flags that fail at once: a command that took a prefix for a flag would not train."""
  return ["--raw-data-dir", str(tmp_path / "none"), "--data-dir", str(tmp_path / "tfds")]


@pytest.mark.slow  # a subprocess
def test_a_sweep_given_seed_for_seeds_is_one_line_and_exit_2(tmp_path):
  workdir = tmp_path / "sweep"
  command = [sys.executable, "-m", "experiments.sweep", "mnist_subset_mlp", "--seed", "3",
             "--workdir", str(workdir), *no_data(tmp_path)]  # fmt: skip
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr
  assert done.stderr.splitlines() == [
    "error: --seed: a sweep sets each member's seed from --seeds; pass --seeds"
  ]
  assert not workdir.exists()


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--seeds", "0,1", "--seed", "3"], "--seed: a sweep sets each member's seed from --seeds"),
    (
      ["--seeds", "0", "--weight-decays", "0.1,0.2", "--weight-decay", "0.3"],
      "--weight-decay: the sweep sets each member's λ from --weight-decays",
    ),  # fmt: skip
    (["--seeds", "0", "--weight-decay", "0.1,0.2"], "--weight-decay: '0.1,0.2' is not a"),
    (["--seeds", "0", "--member", "map"], "unrecognized arguments: --member map"),
    (["--seeds", "0", "--work", "x"], "unrecognized arguments: --work x"),
    ([], "--seeds is required"),
  ],
)
def test_sweep_flags_are_taken_by_their_exact_names(argv, message, tmp_path, capsys):
  workdir = tmp_path / "sweep"
  assert sweep.main(["mnist_subset_mlp", *argv, *no_data(tmp_path), "--workdir", workdir]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
  assert not workdir.exists()


def test_a_sweep_with_its_own_weight_decay_keeps_it(tmp_path):
  args, command = sweep.parse_command(
    ["mnist_subset_mlp", "--seeds", "0,1", "--weight-decay", "0.01", "--workdir", str(tmp_path)]
  )
  configs, _ = sweep.members(args, command)
  assert [c.weight_decay for c in configs] == [0.01, 0.01]


@pytest.mark.parametrize(
  "main, argv, prefix",
  [
    (lambda argv: cli.main("mnist_subset_mlp", argv), ["--work", "{tmp}/x"], "--work"),
    (lambda argv: cli.main("mnist_subset_mlp", argv), ["--lr-mile", "2"], "--lr-mile"),
    (compare.main, ["mnist_subset_mlp", "--workdir", "{tmp}/x", "--resu"], "--resu"),
    (plot.main, ["runs/x", "--out", "out", "--tit", "T"], "--tit"),
    (compact.main, ["runs/x", "--ato", "0.1"], "--ato"),
    (prune.main, ["runs/x", "--match", "m", "--rep", "3"], "--rep"),
  ],
)
def test_no_command_reads_a_prefix_as_a_flag(main, argv, prefix, tmp_path, capsys):
  argv = [a.format(tmp=tmp_path) for a in argv]
  if main not in (plot.main, compact.main, prune.main):  # commands that train
    argv += no_data(tmp_path)
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: unrecognized arguments: "), err
  assert err.split()[3] == prefix
