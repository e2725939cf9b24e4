"""Compaction by size: ``pp.compact(path_norm_tol=)``, ``experiments.compact --path-norm-tol``."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

import pathprox_jax as pp
from experiments import cli, compact, heal, models, trained_run

G = pp.GroupSpec


@pytest.mark.slow
def test_units_at_most_the_tolerance_go_exact_zeros_too():
  # Path norms ||w_i|| ||v_i||: 0 (v zero), 2e-7 (tiny, nonzero), 0.5, 0 (w zero, v not), 6.
  w = jnp.array([[1.0, 1e-7, 0.5, 0.0, 2.0]])
  v = jnp.array([[0.0], [2.0], [1.0], [3.0], [3.0]])
  params, groups = {"w": w, "v": v}, {"w": G(0, "in"), "v": G(0, "out")}
  assert pp.compact(params, groups)[1][0].indices.tolist() == [1, 2, 3, 4]  # exact zeros only
  for tol, kept in ((0.0, [1, 2, 4]), (1e-6, [2, 4]), (0.5, [4]), (6.0, [])):
    small, units = pp.compact(params, groups, path_norm_tol=tol)
    assert units[0].indices.tolist() == kept
    np.testing.assert_array_equal(small["w"], np.asarray(w)[:, kept])
    np.testing.assert_array_equal(small["v"], np.asarray(v)[kept])


def test_heads_go_by_their_value_and_output_projections():
  value = np.random.default_rng(0).normal(size=(8, 4, 2)).astype(np.float32)  # [d, heads, dh]
  out = np.random.default_rng(1).normal(size=(4, 2, 8)).astype(np.float32)  # [heads, dh, d]
  value[:, 1] *= 1e-3  # head 1 is small, not zero
  params = {"value": jnp.asarray(value), "out": jnp.asarray(out)}
  groups = {"value": G(0, "in", unit_axis=1), "out": G(0, "out", unit_axis=0)}
  norms = np.linalg.norm(value, axis=(0, 2)) * np.linalg.norm(out, axis=(1, 2))
  tol = 2 * norms[1]
  small, kept = pp.compact(params, groups, path_norm_tol=tol)
  expected = np.flatnonzero(norms > tol)
  assert 1 not in expected and kept[0].indices.tolist() == expected.tolist()
  np.testing.assert_array_equal(small["value"], value[:, expected])
  np.testing.assert_array_equal(small["out"], out[expected])


@pytest.mark.parametrize("tol", [-1e-3, float("nan")])
def test_a_negative_or_nan_tolerance_is_an_error(tol):
  params, groups = (
    {"w": jnp.ones((1, 2)), "v": jnp.ones((2, 1))},
    {"w": G(0, "in"), "v": G(0, "out")},
  )
  with pytest.raises(ValueError, match="path_norm_tol must be finite and >= 0"):
    pp.compact(params, groups, path_norm_tol=tol)


@pytest.fixture
def run_dir(finished_run):
  """The session's 20-step PathProx run of the tiny MLP: no unit switched off yet."""
  return finished_run[0]


@pytest.mark.slow  # compacts a run (compiling its benchmark) and fine-tunes the output
def test_compact_drops_small_units_and_reports_the_changes(run_dir, tmp_path, capsys):
  run = trained_run.restore_run(run_dir)
  scores = {g: np.asarray(s) for g, s in pp.unit_path_norms(run.params, run.groups).items()}
  tol = float(np.median(np.concatenate(list(scores.values()))))
  out = tmp_path / "compact"
  argv = [str(run_dir), "--path-norm-tol", repr(tol), "--out", str(out), "--repeats", "1"]
  assert compact.main(argv) == 0
  printed = capsys.readouterr().out
  record = json.loads((out / "compact.json").read_text())
  expected = {str(g): np.flatnonzero(s > tol).tolist() for g, s in scores.items()}
  assert record["kept"] == expected and record["path_norm_tol"] == tol
  assert 0 < sum(map(len, expected.values())) < sum(map(len, scores.values()))

  config = ml_collections.ConfigDict(json.loads((out / "config.json").read_text()))
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore((out / "params").absolute())
  model, small = models.create_model(run.config), models.create_model(config)
  for split, key in (("test", "check"), ("val", "check_val")):
    before = trained_run.logits_on_test_set(model, run.params, run, split)
    after = trained_run.logits_on_test_set(small, params, run, split)
    labels = run.test_labels if split == "test" else run.val_labels
    assert record[key] == pytest.approx(
      {
        "max_abs_diff": float(np.abs(before - after).max()),
        "tolerance": 1e-5 * max(1.0, float(np.abs(before).max())),
        "sparse_acc": trained_run.accuracy(before, labels),
        "compact_acc": trained_run.accuracy(after, labels),
      }
    )
    assert record[key]["max_abs_diff"] > record[key]["tolerance"]  # the outputs did change
    assert f"{split} set (" in printed
  assert "outputs changed: --atol 0, --path-norm-tol" in printed
  assert f"heal: python -m experiments.heal {out} --steps 2 --lrs " in printed  # 20 steps / 10

  # A fine-tune starts from the compact output as from a prune output.
  argv = heal.run_argv(heal.heal_config(config, out / "params", 1, 0.01, {"log_freq": 1}))
  workdir = tmp_path / "finetune"
  assert cli.main("mnist_subset_mlp", [*argv, "--workdir", str(workdir)]) == 0
  first = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
  assert first["test_acc"] == pytest.approx(record["check"]["compact_acc"], abs=1e-6)
  assert first["val_acc"] == pytest.approx(record["check_val"]["compact_acc"], abs=1e-6)


def test_a_bad_tolerance_is_a_one_line_error(run_dir, tmp_path, capsys):
  out = tmp_path / "out"
  assert compact.main([str(run_dir), "--path-norm-tol", "-1", "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--path-norm-tol" in err
  assert not out.exists()
