"""``python -m experiments.prune`` and ``--init-params`` on a tiny weight-decay ViT run."""

import contextlib
import io
import json
import shlex

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import TOY_VIT, toy_vit_flags

import pathprox_jax as pp
from experiments import cli, compact, heal, init_params, models, prune, trained_run

# One xdist worker runs this file (--dist loadgroup): the session's vit_run and pruned are made
# once.
pytestmark = pytest.mark.xdist_group("prune")

KEEP = [3, 10, 1, 0]  # heads and neurons of blocks 0 and 1 (of 4, 16, 4, 16)


def read_output(out):
  """``(config, params, record)`` of a prune output folder, restored without a template."""
  config = ml_collections.ConfigDict(json.loads((out / "config.json").read_text()))
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore((out / "params").absolute())
  return config, params, json.loads((out / prune.MARKER).read_text())


def unit_norms(x, axis):
  """Each unit's norm: over every axis but ``axis``, in float64."""
  x = np.asarray(x, np.float64)
  return np.sqrt(np.sum(x * x, axis=tuple(a for a in range(x.ndim) if a != axis)))


def numpy_scores(params, blocks):
  """``{group: ||w_i|| ||v_i||}`` of a ViT's heads (value, out) and FFN neurons (in, out)."""
  scores = {}
  for b in range(blocks):
    attention, block = params[f"block_{b}"]["attention"], params[f"block_{b}"]
    scores[2 * b] = unit_norms(attention["value"]["kernel"], 1) * unit_norms(
      attention["out"]["kernel"], 0
    )
    scores[2 * b + 1] = unit_norms(block["ffn_in"]["kernel"], 1) * unit_norms(
      block["ffn_out"]["kernel"], 0
    )
  return scores


@pytest.fixture(scope="module")
def pruned(vit_run):
  """``(output folder, printed text)`` of ``--keep 3,10,1,0`` on the run."""
  out = vit_run.parent / "pruned"
  argv = [str(vit_run), "--keep", ",".join(map(str, KEEP)), "--out", str(out), "--repeats", "1"]
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    assert prune.main(argv) == 0
  return out, printed.getvalue()


@pytest.mark.slow  # trains a ViT run (vit_run)
def test_pruning_keeps_the_largest_units_and_the_function_without_the_others(vit_run, pruned):
  out, printed = pruned
  config, params, record = read_output(out)
  assert [len(record["kept"][str(g)]) for g in range(4)] == KEEP
  assert (tuple(config.num_heads), tuple(config.mlp_dim)) == ((3, 1), (10, 0))
  assert record["widths"] == {"num_heads": [3, 1], "mlp_dim": [10, 0]}

  run = trained_run.restore_run(vit_run)
  for g, scores in numpy_scores(run.params, 2).items():
    expected = np.sort(np.argsort(-scores, kind="stable")[: KEEP[g]])
    assert record["kept"][str(g)] == expected.tolist()
    dropped = np.setdiff1d(np.arange(len(scores)), expected)
    assert scores[expected].min(initial=np.inf) >= scores[dropped].max(initial=0)

  # The pruned model computes the dense one with the dropped units' "out" weights zeroed.
  zeroed = jax.tree.map(np.array, run.params)
  for b in range(2):
    heads, neurons = (np.setdiff1d(np.arange(n), record["kept"][str(2 * b + i)]) for i, n in
                      enumerate((4, 16)))  # fmt: skip
    zeroed[f"block_{b}"]["attention"]["out"]["kernel"][heads] = 0
    zeroed[f"block_{b}"]["ffn_out"]["kernel"][neurons] = 0
  x = jax.random.normal(jax.random.key(0), (16, 28, 28, 1))
  with jax.default_matmul_precision("highest"):  # one compiled program each, not op by op
    dense = jax.jit(models.create_model(run.config).apply)({"params": zeroed}, x)
    small = jax.jit(models.create_model(config).apply)({"params": params}, x)
  np.testing.assert_allclose(small, dense, atol=1e-5 * max(1.0, float(np.abs(dense).max())), rtol=0)

  logits = trained_run.logits_on_test_set(models.create_model(run.config), run.params, run)
  assert record["test_acc"]["dense"] == trained_run.accuracy(logits, run.test_labels)
  assert record["parameters"]["pruned"] < record["parameters"]["dense"]
  assert 0 < record["flops_per_example"]["ratio"] < 1
  assert "test accuracy" in printed and f"heal: python -m experiments.heal {out}" in printed


@pytest.mark.slow  # trains a ViT run (vit_run)
def test_match_keeps_the_counts_of_a_compact_output(vit_run, tmp_path):
  match = tmp_path / "compact"
  match.mkdir()
  kept = {"0": [0, 2], "1": list(range(5)), "2": [1, 2, 3], "3": [4]}
  record = {"kept": kept, "original_units": {"0": 4, "1": 16, "2": 4, "3": 16}}
  (match / compact.MARKER).write_text(json.dumps(record))
  out = tmp_path / "out"
  assert prune.main([str(vit_run), "--match", str(match), "--out", str(out), "--repeats", "1"]) == 0
  _, _, pruned = read_output(out)
  assert [len(pruned["kept"][g]) for g in kept] == [2, 5, 3, 1]
  assert pruned["match"] == str(match.absolute())


@pytest.mark.slow  # trains a ViT run and fine-tunes it
def test_init_params_starts_the_run_from_the_pruned_params(raw_mnist, pruned, tmp_path):
  out, _ = pruned
  config, params, record = read_output(out)
  python, dash_m, module, source, *rest = shlex.split(record["heal_command"])
  assert (python, dash_m, module, source) == ("python", "-m", "experiments.heal", str(out))
  assert rest[:2] == ["--steps", "3"]  # a tenth of the run's 30 steps
  argv = heal.run_argv(heal.heal_config(config, out / "params", 2, 0.005, {"log_freq": 2}))
  assert argv[argv.index("--init-params") + 1] == str((out / "params").absolute())
  workdir = tmp_path / "finetune"
  assert cli.main("fashion_mnist_vit", [*argv, "--workdir", str(workdir)]) == 0

  first = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
  assert first["step"] == 0
  assert first["test_acc"] == pytest.approx(record["test_acc"]["pruned"], abs=1e-6)
  _, groups = trained_run.abstract_state(config)
  expected = pp.path_norm(params, groups).per_group
  assert {g: first[f"path_norm/g{g}"] for g in expected} == pytest.approx(
    {g: float(v) for g, v in expected.items()}, rel=1e-5
  )


@pytest.mark.slow  # trains a ViT run (vit_run)
@pytest.mark.parametrize(
  "init, message",
  [
    ("missing", "--init-params {}: no such folder"),
    ("params", "--init-params {} was saved from a model with --num-heads 3,1 (here 4,4)"),
  ],
)
def test_init_params_that_do_not_fit_are_a_one_line_error(
  raw_mnist, pruned, tmp_path, capsys, init, message
):
  path = pruned[0] / init
  workdir = tmp_path / "run"
  data = toy_vit_flags(raw_mnist, pruned[0].parent)  # the run's data, prepared already
  argv = ["--workdir", str(workdir), *data, *TOY_VIT, "--method", "wd",
          "--total-iter", "2", "--init-params", str(path)]  # fmt: skip
  assert cli.main("fashion_mnist_vit", argv) == 2  # the run's widths, not the pruned ones
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and message.format(path) in err
  assert not workdir.exists()


def test_init_params_is_the_identity_when_empty():
  params = {"w": np.ones(2)}
  assert init_params.restore_init_params("", params) is params


@pytest.mark.slow  # trains a ViT run (vit_run)
@pytest.mark.parametrize(
  "flags, message",
  [
    (["--keep", "3,10,1"], "--keep lists 3 counts, but the run has 4 groups (of 4,16,4,16 units)"),
    (["--keep", "5,10,1,0"], "group 0 has 4 units: it can keep 0 to 4, not 5"),
    (["--keep", "3,x,1,0"], "--keep: '3,x,1,0' is not a comma-separated list of unit counts"),
    (["--match", "{tmp}/nowhere"], "--match {tmp}/nowhere is not a compact output"),
    (["--match", "{tmp}/other"], "--match was compacted from a model whose groups have 4,8"),
    (["--keep", "1,1,1,1", "--match", "{tmp}"], "not allowed with argument"),
    ([], "one of the arguments --match --keep --target-flops is required"),
  ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(
  vit_run, tmp_path, capsys, flags, message
):
  other = tmp_path / "other"
  other.mkdir()
  record = {"kept": {"0": [0], "1": [0]}, "original_units": {"0": 4, "1": 8}}
  (other / compact.MARKER).write_text(json.dumps(record))
  out = tmp_path / "out"
  flags = [f.format(tmp=tmp_path) for f in flags]
  assert prune.main([str(vit_run), *flags, "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ")
  assert message.format(tmp=tmp_path) in err
  assert not out.exists()


def test_run_folder_without_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
  assert prune.main([str(tmp_path / "nowhere"), "--keep", "1"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "is not a run folder: it has no config.json" in err
  assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
  "keep, message",
  [
    ({0: [0, 0]}, r"keep\[0\] must be distinct unit indices in \[0, 3\)"),
    ({0: [3]}, r"keep\[0\] must be distinct unit indices in \[0, 3\)"),
    ({1: [0]}, "keep names group 1, which the groups do not have"),
  ],
)
def test_compact_refuses_a_bad_keep(keep, message):
  params = {"w": np.ones((2, 3)), "v": np.ones((3, 1))}
  groups = {"w": pp.GroupSpec(0, "in"), "v": pp.GroupSpec(0, "out")}
  with pytest.raises(ValueError, match=message):
    pp.compact(params, groups, keep=keep)


def test_compact_keeps_the_named_units_whatever_their_weights():
  params = {"w": np.ones((2, 3)), "v": np.array([[1.0], [0.0], [2.0]])}
  groups = {"w": pp.GroupSpec(0, "in"), "v": pp.GroupSpec(0, "out")}
  small, kept = pp.compact(params, groups, keep={0: [2, 1]})
  assert kept[0].indices.tolist() == [1, 2] and small["v"].tolist() == [[0.0], [2.0]]


@pytest.mark.slow  # prunes a run (compiling its benchmark)
def test_mlp_pruning_keeps_the_largest_neurons_and_at_least_one_per_layer(
  finished_run, tmp_path, capsys
):
  run_dir, _ = finished_run  # the 32,32,32,32,32,10 MLP
  out = tmp_path / "out"
  assert prune.main([str(run_dir), "--keep", "5,0,7", "--out", str(out)]) == 2
  assert "group 1 has 32 units: it can keep 1 to 32, not 0" in capsys.readouterr().err
  assert not out.exists()

  assert prune.main([str(run_dir), "--keep", "5,2,7", "--out", str(out), "--repeats", "1"]) == 0
  config, params, record = read_output(out)
  assert tuple(config.features) == (5, 32, 2, 32, 7, 10)
  run = trained_run.restore_run(run_dir)
  zeroed = jax.tree.map(np.array, run.params)
  for g, count in enumerate((5, 2, 7)):
    w, v = run.params[f"Dense_{2 * g}"]["kernel"], run.params[f"Dense_{2 * g + 1}"]["kernel"]
    scores = unit_norms(w, 1) * unit_norms(v, 0)
    assert record["kept"][str(g)] == np.sort(np.argsort(-scores, kind="stable")[:count]).tolist()
    zeroed[f"Dense_{2 * g + 1}"]["kernel"][np.setdiff1d(np.arange(32), record["kept"][str(g)])] = 0
  x = jax.random.normal(jax.random.key(0), (16, 28, 28, 1))
  with jax.default_matmul_precision("highest"):  # one compiled program each, not op by op
    dense = jax.jit(models.create_model(run.config).apply)({"params": zeroed}, x)
    small = jax.jit(models.create_model(config).apply)({"params": params}, x)
  np.testing.assert_allclose(small, dense, atol=1e-5 * max(1.0, float(np.abs(dense).max())), rtol=0)


def cut_by_hand(scores, costs, fraction):
  """The units the global cut keeps, one at a time in NumPy: ascending score / c_g (ties: the
  earlier unit of the groups in order), each switched off if its cost still fits in (1 - F) of
  the total, else skipped."""
  ratio = np.concatenate([scores[g] / costs[g] for g in scores])
  cost = np.concatenate([np.full(len(scores[g]), costs[g]) for g in scores])
  off = np.zeros(len(ratio), bool)
  left = (1 - fraction) * cost.sum() * (1 + 1e-6)
  for unit in np.argsort(ratio, kind="stable"):
    if cost[unit] <= left:
      off[unit], left = True, left - cost[unit]
  starts = np.cumsum([0, *(len(s) for s in scores.values())])
  return {
    g: np.flatnonzero(~off[a:b]) for g, a, b in zip(scores, starts[:-1], starts[1:], strict=True)
  }


def test_the_global_cut_takes_the_expensive_group_s_units_first_at_equal_scores():
  scores = {0: np.array([1.0, 2.0, 3.0]), 1: np.array([1.0, 2.0, 3.0])}
  costs = {0: 10.0, 1: 30.0}  # FLOPs of one unit: group 1's cost 3, group 0's 1 (of 12 in all)
  # score / c_g: group 0 1, 2, 3; group 1 1/3, 2/3, 1. F = 0.5 frees 6: group 1's units 0, 1.
  kept, emptied = prune.global_cut(scores, costs, 0.5, may_be_empty=False)
  assert {g: k.tolist() for g, k in kept.items()} == {0: [0, 1, 2], 1: [2]} and emptied == []
  # F = 0.25 frees 9: then group 0's unit 0 (ratio 1, cost 1) before group 1's unit 2 (1, cost 3),
  # which no longer fits and stays: group 0's units 1 and 2 go instead, to exactly 0.25, and
  # group 0, which may not be empty, keeps its best unit.
  kept, emptied = prune.global_cut(scores, costs, 0.25, may_be_empty=False)
  assert {g: k.tolist() for g, k in kept.items()} == {0: [2], 1: [2]} and emptied == [0]


def test_the_global_cut_keeps_the_best_unit_of_a_group_that_may_not_be_empty():
  scores = {0: np.array([1.0, 2.0, 3.0]), 1: np.array([5.0, 4.0, 6.0])}
  costs = {0: 1.0, 1: 10.0}  # group 1's ratios 0.5, 0.4, 0.6 are all below group 0's
  kept, emptied = prune.global_cut(scores, costs, 0.05, may_be_empty=True)  # frees 31.35 of 33
  assert {g: k.tolist() for g, k in kept.items()} == {0: [1, 2], 1: []} and emptied == []
  kept, emptied = prune.global_cut(scores, costs, 0.05, may_be_empty=False)
  assert {g: k.tolist() for g, k in kept.items()} == {0: [1, 2], 1: [2]} and emptied == [1]


def mlp_scores_and_costs(params):
  """``{group: ||w_i|| ||v_i||}`` and ``{group: FLOPs of one neuron}`` of the tiny MLP run's
  groups (Dense_2g -> Dense_2g+1; a neuron costs 2 d_in + 2 d_out per example)."""
  scores, costs = {}, {}
  for g in range(3):
    w, v = params[f"Dense_{2 * g}"]["kernel"], params[f"Dense_{2 * g + 1}"]["kernel"]
    scores[g] = unit_norms(w, 1) * unit_norms(v, 0)
    costs[g] = 2.0 * (w.shape[0] + v.shape[1])
  return scores, costs


@pytest.mark.slow  # prunes a run (compiling its benchmark)
def test_target_flops_keeps_the_largest_path_norms_per_flop_over_all_groups(finished_run, tmp_path):
  run_dir, _ = finished_run  # the 32,32,32,32,32,10 MLP
  out = tmp_path / "out"
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    argv = [str(run_dir), "--target-flops", "0.5", "--out", str(out), "--repeats", "1"]
    assert prune.main(argv) == 0
  config, params, record = read_output(out)
  run = trained_run.restore_run(run_dir)
  scores, costs = mlp_scores_and_costs(run.params)
  cheapest = min(costs.values())
  assert record["unit_costs"] == pytest.approx({str(g): c / cheapest for g, c in costs.items()})
  expected = cut_by_hand(scores, costs, 0.5)
  assert {int(g): k for g, k in record["kept"].items()} == {
    g: k.tolist() for g, k in expected.items()
  }
  total = sum(32 * c for c in costs.values())
  assert record["target_flops"] == 0.5 and record["kept_largest_unit"] == []
  cheapest_on = min(costs[g] for g, k in expected.items() if len(k))
  assert 0.5 <= record["flops_kept"] < 0.5 + cheapest_on / total  # a dear misfit is skipped
  assert record["flops_kept"] == pytest.approx(
    sum(costs[g] * len(k) for g, k in expected.items()) / total
  )
  assert f"grouped units' FLOPs kept: {record['flops_kept']:.4f} (target 0.5)" in printed.getvalue()

  # The pruned model computes the dense one with the dropped neurons' "out" weights zeroed.
  zeroed = jax.tree.map(np.array, run.params)
  for g, k in expected.items():
    zeroed[f"Dense_{2 * g + 1}"]["kernel"][np.setdiff1d(np.arange(32), k)] = 0
  x = jax.random.normal(jax.random.key(0), (16, 28, 28, 1))
  with jax.default_matmul_precision("highest"):  # one compiled program each, not op by op
    dense = jax.jit(models.create_model(run.config).apply)({"params": zeroed}, x)
    small = jax.jit(models.create_model(config).apply)({"params": params}, x)
  np.testing.assert_allclose(small, dense, atol=1e-5 * max(1.0, float(np.abs(dense).max())), rtol=0)


@pytest.mark.slow  # prunes a run (compiling its benchmark)
def test_a_target_flops_that_empties_an_mlp_layer_keeps_its_best_neuron(finished_run, tmp_path):
  run_dir, _ = finished_run
  out = tmp_path / "out"
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):  # 0.1% of the FLOPs: less than any one neuron costs
    argv = [str(run_dir), "--target-flops", "0.001", "--out", str(out), "--repeats", "1"]
    assert prune.main(argv) == 0
  config, _, record = read_output(out)
  scores, costs = mlp_scores_and_costs(trained_run.restore_run(run_dir).params)
  # The cut keeps only the unit of largest score / c_g (the kept FLOPs are >= F); the two other
  # layers keep their neuron of largest score.
  best = max(scores, key=lambda g: scores[g].max() / costs[g])
  assert record["kept_largest_unit"] == [g for g in scores if g != best]
  assert record["kept"] == {str(g): [int(np.argmax(s))] for g, s in scores.items()}
  assert tuple(config.features) == (1, 32, 1, 32, 1, 10)
  assert record["flops_kept"] == pytest.approx(1 / 32)
  for g in record["kept_largest_unit"]:
    assert f"group {g} keeps its largest-score unit: the cut would have emptied it" in (
      printed.getvalue()
    )


@pytest.mark.parametrize("value", ["0", "1.5", "nan", "abc", "-0.5", "inf"])
def test_a_target_flops_outside_0_1_is_a_one_line_error_and_writes_nothing(tmp_path, capsys, value):
  out = tmp_path / "out"
  assert prune.main([str(tmp_path / "run"), "--target-flops", value, "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert err == f"error: --target-flops: {value!r} is not a fraction of the FLOPs in (0, 1]\n"
  assert not out.exists()


def test_target_flops_and_keep_together_are_a_one_line_error(tmp_path, capsys):
  out = tmp_path / "out"
  argv = [str(tmp_path / "run"), "--target-flops", "0.5", "--keep", "1", "--out", str(out)]
  assert prune.main(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "argument --keep: not allowed with argument --target-flops" in err
  assert not out.exists()
