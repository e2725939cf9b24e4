"""The ViT experiment: model, PathProx groups of heads and FFN neurons, and a toy run end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

import pathprox_jax as pp
from experiments import cli, compact, compare, models, run_folder, trained_run

G = pp.GroupSpec
TINY = dict(num_heads=(2, 2), mlp_dim=(8, 8), width=16, head_dim=4)


def toy_flags(raw_dir, tmp_path):
  """Flags of a toy run on generated data (Fashion-MNIST has MNIST's file format)."""
  return ["--raw-data-dir", str(raw_dir), "--allow-unofficial-data", "true", "--data-dir",
          str(tmp_path / "tfds"), "--val-size", "100", "--batch-size", "40",
          "--eval-batch-size", "200", "--progress", "false"]  # fmt: skip


def _init(model, x):
  return jax.jit(model.init)(jax.random.key(0), x)["params"]


def test_vit_shapes():
  model = models.ViT(num_heads=(4, 4, 4), mlp_dim=(32, 32, 32), width=24, head_dim=6)
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  shapes = jax.tree.map(lambda x: x.shape, meta.unbox(boxed))
  assert shapes["embedding"]["kernel"] == (49, 24)
  assert shapes["position"] == (1, 17, 24)  # 16 patches and the class token
  attention = shapes["block_2"]["attention"]
  assert attention["value"] == {"kernel": (24, 4, 6), "bias": (4, 6)}
  assert attention["out"] == {"kernel": (4, 6, 24), "bias": (24,)}
  assert shapes["block_2"]["ffn_in"]["kernel"] == (24, 32)
  assert shapes["head"]["kernel"] == (24, 10)


@pytest.mark.slow
def test_vit_groups_heads_and_ffn_neurons_per_block():
  model = models.ViT(**TINY)
  boxed = _init(model, jnp.zeros((1, 28, 28, 1)))
  groups = model.group_spec(boxed)
  for block in range(2):
    heads, neurons = models.vit_groups(block)
    attention = groups[f"block_{block}"]["attention"]
    assert attention["value"] == {"kernel": G(heads, "in", 1), "bias": G(heads, "in", 0)}
    assert attention["out"] == {"kernel": G(heads, "out", 0), "bias": G(heads, "out")}
    for name in ("query", "key"):  # removed with their head, else plain weight decay
      assert attention[name] == {"kernel": G(heads, "follow", 1), "bias": G(heads, "follow", 0)}
    assert groups[f"block_{block}"]["ffn_in"] == {
      "kernel": G(neurons, "in"),
      "bias": G(neurons, "in"),
    }
    assert groups[f"block_{block}"]["ffn_out"] == {
      "kernel": G(neurons, "out"),
      "bias": G(neurons, "out"),
    }
  for name in ("embedding", "head", "norm"):
    assert all(spec is None for spec in jax.tree.leaves(groups[name], is_leaf=lambda s: s is None))
  assert groups["position"] is None and groups["cls"] is None
  params = meta.unbox(boxed)
  active = pp.active_units(params, groups)
  assert {g: int(n) for g, n in active.per_group.items()} == {0: 2, 1: 8, 2: 2, 3: 8}


def test_vit_spec_refuses_balance_across_residual_blocks():
  model = models.ViT(**TINY)
  boxed = _init(model, jnp.zeros((1, 28, 28, 1)))
  groups, params = model.group_spec(boxed), meta.unbox(boxed)
  with pytest.raises(ValueError, match="balance=False"):
    pp.pathprox_sgd(0.1, 1e-4, groups).init(params)
  pp.pathprox_sgd(0.1, 1e-4, groups, balance=False).init(params)


def test_vit_rejects_mismatched_blocks_and_patches():
  with pytest.raises(ValueError, match="num_heads and mlp_dim for every block"):
    _init(models.ViT(num_heads=(2,), mlp_dim=(8, 8)), jnp.zeros((1, 28, 28, 1)))
  with pytest.raises(ValueError, match="patch size 7 does not divide"):
    _init(models.ViT(**TINY), jnp.zeros((1, 30, 30, 1)))


def _keep(params, block, heads, neurons):
  """``params`` with block ``block`` narrowed to the given heads and FFN neurons."""
  params = jax.tree.map(lambda a: a, params)  # a copy of the nested dicts
  attention = params[f"block_{block}"]["attention"]
  for name in ("query", "key", "value"):
    attention[name] = {
      "kernel": attention[name]["kernel"][:, heads],
      "bias": attention[name]["bias"][heads],
    }
  attention["out"]["kernel"] = attention["out"]["kernel"][heads]
  ffn_in, ffn_out = params[f"block_{block}"]["ffn_in"], params[f"block_{block}"]["ffn_out"]
  ffn_in["kernel"], ffn_in["bias"] = ffn_in["kernel"][:, neurons], ffn_in["bias"][neurons]
  ffn_out["kernel"] = ffn_out["kernel"][neurons]
  return params


@pytest.mark.slow
@pytest.mark.parametrize("heads, neurons", [([1], [0, 3, 5]), ([], [])])
def test_narrower_vit_computes_the_same_without_dead_heads_and_neurons(heads, neurons):
  model = models.ViT(**TINY)
  x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
  params = meta.unbox(_init(model, x))
  block = params["block_1"]
  dead_heads = np.setdiff1d(np.arange(2), heads)
  dead_neurons = np.setdiff1d(np.arange(8), neurons)
  block["attention"]["out"]["kernel"] = block["attention"]["out"]["kernel"].at[dead_heads].set(0)
  block["attention"]["out"]["bias"] = jnp.full((16,), 0.3)  # left when no head is
  block["ffn_out"]["kernel"] = block["ffn_out"]["kernel"].at[dead_neurons].set(0)
  block["ffn_out"]["bias"] = jnp.full((16,), -0.2)
  narrow = models.ViT(**{**TINY, "num_heads": (2, len(heads)), "mlp_dim": (8, len(neurons))})
  smaller = _keep(params, 1, np.array(heads, int), np.array(neurons, int))
  np.testing.assert_allclose(
    jax.jit(narrow.apply)({"params": smaller}, x),
    jax.jit(model.apply)({"params": params}, x),
    atol=1e-5,
  )


@pytest.mark.slow  # trains two ViT runs
def test_vit_comparison_runs_end_to_end(raw_mnist, tmp_path):
  """Both methods at toy size, then the figures (with one panel per block's heads and neurons)."""
  argv = ["fashion_mnist_vit", "--workdir", str(tmp_path / "cmp"), *toy_flags(raw_mnist, tmp_path),
          "--num-heads", "2,2", "--mlp-dim", "8,8", "--width", "16", "--head-dim", "4",
          "--total-iter", "20", "--log-freq", "10", "--save-freq", "20"]  # fmt: skip
  assert compare.main(argv) == 0
  for method in ("pathprox", "wd"):
    run = tmp_path / "cmp" / method
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert {"active_units/g1", "active_units/g3"} <= set(rows[-1])
    config = json.loads((run / "config.json").read_text())
    assert config["balance"] is False and config["model"] == "vit"
    assert config["group_names"] == {
      "0": "block 0 heads", "1": "block 0 neurons", "2": "block 1 heads", "3": "block 1 neurons"
    }  # fmt: skip
  assert (tmp_path / "cmp" / "active_units_by_group.png").exists()
  assert "active_units_by_group.png" in (tmp_path / "cmp" / "report.md").read_text()


@pytest.mark.slow  # trains a ViT run
def test_vit_pathprox_run_compacts_to_the_same_function(raw_mnist, tmp_path, capsys):
  run = tmp_path / "run"
  argv = ["--workdir", str(run), *toy_flags(raw_mnist, tmp_path), "--num-heads", "4,4",
          "--mlp-dim", "16,16", "--width", "16", "--head-dim", "4", "--total-iter", "30",
          "--log-freq", "30", "--save-freq", "30", "--weight-decay", "1.0"]  # fmt: skip
  assert cli.main("fashion_mnist_vit", argv) == 0
  last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
  active = [last[f"active_units/g{g}"] for g in range(4)]
  assert active[1::2] == [0, 0]  # λ this large leaves no FFN neuron: only its out bias adds

  assert compact.main([str(run), "--repeats", "2"]) == 0
  assert "max |logit difference|" in capsys.readouterr().out
  record = json.loads((run / "compact" / "compact.json").read_text())
  assert record["widths"] == {"num_heads": active[0::2], "mlp_dim": active[1::2]}
  assert record["check"]["max_abs_diff"] <= record["check"]["tolerance"]
  assert record["parameters"]["compact"] < record["parameters"]["sparse"]
  _, groups = trained_run.abstract_state(run_folder.read_config(run / "config.json"))
  grouped = {spec.group for spec in jax.tree.leaves(groups)}
  assert grouped == {0, 1, 2, 3}  # compaction sees the heads' groups, not only the neurons'
