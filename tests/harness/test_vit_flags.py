"""ViT flags through the command line: refused in one line where the model cannot train,
trained where it can (blocks without heads, a fine-tune of a model that lost every head)."""

import json

import pytest

from experiments import cli, heal, prune, run_folder

VIT = ["--num-heads", "2,2", "--mlp-dim", "8,8", "--width", "16", "--head-dim", "4"]


def toy_flags(raw_dir, tmp_path, steps=2):
  """A toy ViT run on generated data (Fashion-MNIST has MNIST's file format)."""
  return ["--raw-data-dir", str(raw_dir), "--allow-unofficial-data", "true", "--data-dir",
          str(tmp_path / "tfds"), "--val-size", "100", "--batch-size", "40",
          "--eval-batch-size", "200", "--progress", "false", "--total-iter", str(steps),
          "--log-freq", str(steps), "--save-freq", str(steps)]  # fmt: skip


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--balance", "true"], "--balance true: a ViT's blocks are joined by residual connections"),
    (["--num-heads", "0,0", "--mlp-dim", "0,0"], "leave the ViT no head or neuron"),
    (["--head-dim", "0"], "--head-dim must be >= 1, got 0"),
  ],
  ids=["balance", "no-units", "head-dim-0"],
)
def test_a_vit_that_cannot_train_is_refused_in_one_line(
  raw_mnist, tmp_path, capsys, flags, message
):
  workdir = tmp_path / "run"
  argv = ["--workdir", str(workdir), *toy_flags(raw_mnist, tmp_path), *VIT, *flags]
  assert cli.main("fashion_mnist_vit", argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err
  assert not workdir.exists()


@pytest.mark.slow  # trains a ViT run
def test_a_vit_without_heads_trains(raw_mnist, tmp_path):
  workdir = tmp_path / "run"
  argv = ["--workdir", str(workdir), *toy_flags(raw_mnist, tmp_path), *VIT, "--num-heads", "0,0"]
  assert cli.main("fashion_mnist_vit", argv) == 0
  record = json.loads((workdir / "config.json").read_text())
  assert record["units"] == {"1": 8, "3": 8}  # the FFN neurons only
  assert "features" not in record  # an MLP's key, which a ViT does not read


# On the prune tests' xdist worker (--dist loadgroup), which trains the session's vit_run.
@pytest.mark.xdist_group("prune")
@pytest.mark.slow  # prunes the session's ViT run (compiling its benchmark) and fine-tunes it
def test_a_fine_tune_of_a_model_that_lost_every_head_trains(vit_run, tmp_path):
  out = tmp_path / "pruned"
  assert prune.main([str(vit_run), "--keep", "0,5,0,3", "--out", str(out), "--repeats", "1"]) == 0
  config = run_folder.read_config(out / run_folder.CONFIG)
  finetune = heal.run_argv(heal.heal_config(config, out / "params", 2, 0.005, {"log_freq": 1}))
  assert finetune[finetune.index("--num-heads") + 1] == "0,0"
  assert cli.main("fashion_mnist_vit", [*finetune, "--workdir", str(tmp_path / "finetune")]) == 0
  rows = (tmp_path / "finetune" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(row)["step"] for row in rows] == [0, 1, 2]
