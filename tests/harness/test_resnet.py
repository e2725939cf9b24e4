"""The ResNet family: its groups (the blocks' inner BatchNorm channels), its compaction with the
running statistics, and its runs (batch statistics trained, resumed, compacted and pruned)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import read_rows
from test_experiments import assert_rows_close

import pathprox_jax as pp
from configs import load_config
from experiments import (
  cli,
  compact,
  experiment,
  groups,
  models,
  prune,
  resnet,
  run_folder,
  trained_run,
)

SMALL = {"stage_widths": (4, 8, 8), "blocks": 1, "inner_widths": (4, 8, 6)}
X = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
RESNET = ["--stage-widths", "4,8,8", "--blocks", "1", "--inner-widths", "4,8,6"]


def resnet_config():
  config = load_config("fashion_mnist_resnet")
  config.update(SMALL)
  return config


def grouped_leaves(spec):
  """``{"layer/param": (group, role)}`` of the grouped leaves of a spec."""
  flat = jax.tree_util.tree_flatten_with_path(spec, is_leaf=lambda s: isinstance(s, pp.GroupSpec))
  return {
    "/".join(k.key for k in path): (s.group, s.role)
    for path, s in flat[0]
    if isinstance(s, pp.GroupSpec)
  }


def test_the_groups_are_the_blocks_inner_channels_and_discovery_agrees():
  config = resnet_config()
  model = models.create_model(config)
  boxed, variables = random_variables(model)
  state = {"batch_stats": variables["batch_stats"]}
  spec = groups.group_spec(models.family(config), model, boxed["params"], X, "auto", state)
  expected = {}
  for b in range(3):
    block = f"block_{b}"
    expected |= {f"{block}/conv1/kernel": (b, "follow"), f"{block}/conv2/kernel": (b, "out")}
    expected |= {f"{block}/norm1/scale": (b, "in"), f"{block}/norm1/bias": (b, "in")}
  assert grouped_leaves(spec) == expected  # no stem, no block output (norm2), no skip

  # Unannotated, in training mode (batch statistics), discovery finds the same units.
  plain = resnet.ResNet(**SMALL)  # no axis_name: traced outside a mapped axis

  def train_mode(p, x):
    out, _ = plain.apply({"params": p, **state}, x, mutable=["batch_stats"])
    return out

  assert grouped_leaves(pp.discover_groups(train_mode, variables["params"], X)) == expected


def random_variables(model):
  """``(boxed shapes, variables)`` of ``model``, filled from NumPy (the initialisation of a
  ResNet compiles slowly on CPU): running means, variances and BatchNorm scales away from their
  initial 0, 1 and 1, so that slicing the wrong channels' would change the outputs."""
  boxed = jax.eval_shape(model.init, jax.random.key(0), X)
  rng = np.random.default_rng(0)
  ranges = {"mean": (-1.0, 0.0), "var": (0.1, 1.1), "scale": (0.5, 1.5)}

  def fill(path, leaf):
    name = path[-1].key
    if name in ranges:
      return jnp.asarray(rng.uniform(*ranges[name], leaf.shape), leaf.dtype)
    return jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype)

  return boxed, jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(boxed))


def test_a_compact_resnet_computes_the_same_with_its_running_statistics_sliced():
  config = resnet_config()
  model = models.create_model(config)
  boxed, variables = random_variables(model)
  # Units 0 and 2 of block 0, and every unit of block 2, switched off (rows of conv2's kernel).
  for b, units in ((0, [0, 2]), (2, slice(None))):
    conv2 = variables["params"][f"block_{b}"]["conv2"]
    conv2["kernel"] = conv2["kernel"].at[:, :, units, :].set(0.0)
  spec = models.family(config).group_spec(model, boxed["params"])

  smaller, kept = pp.compact(variables, spec)
  assert {g: k.width for g, k in kept.items()} == {0: 2, 1: 8, 2: 0}
  small_config = models.compacted_config(config, kept)
  assert tuple(small_config.inner_widths) == (2, 8, 0)
  small = trained_run.without_empty_arrays(smaller)
  stats, before_stats = small["batch_stats"], variables["batch_stats"]
  for name in ("mean", "var"):
    np.testing.assert_array_equal(
      stats["block_0"]["norm1"][name], before_stats["block_0"]["norm1"][name][np.array([1, 3])]
    )
  assert "norm1" not in stats["block_2"] and "norm2" in stats["block_2"]
  with jax.default_matmul_precision("highest"):
    before = jax.jit(model.apply)(variables, X)
    after = jax.jit(models.create_model(small_config).apply)(small, X)
  np.testing.assert_allclose(after, before, atol=1e-5 * float(np.abs(before).max()), rtol=0)


def toy_flags(raw_dir, tmp_path, steps):
  """A toy ResNet run on generated data (Fashion-MNIST has MNIST's file format), on 2 devices
  (the batch statistics are averaged across them), at a constant learning rate (which a longer
  run may resume)."""
  return ["--raw-data-dir", str(raw_dir), "--allow-unofficial-data", "true", "--data-dir",
          str(tmp_path / "tfds"), "--val-size", "100", "--batch-size", "40",
          "--eval-batch-size", "200", "--progress", "false", "--num-devices", "2",
          "--lr-schedule", "step", "--total-iter", str(steps), "--log-freq", "2", "--save-freq",
          "2", *RESNET]  # fmt: skip


def latest(run):
  """The run's latest checkpointed state."""
  state = trained_run.restore_checkpoint(run).state
  return state


# The tests that read resnet_run share one xdist worker (--dist loadgroup): it is trained once.
ON_RESNET_RUN = pytest.mark.xdist_group("resnet_run")


@pytest.fixture(scope="module")
def resnet_run(raw_mnist, tmp_path_factory):
  """A 4-step PathProx ResNet run."""
  tmp = tmp_path_factory.mktemp("resnet")
  argv = ["--workdir", str(tmp / "run"), *toy_flags(raw_mnist, tmp, 4)]
  assert cli.main("fashion_mnist_resnet", argv) == 0
  return tmp / "run"


@ON_RESNET_RUN
@pytest.mark.slow  # trains two ResNet runs
def test_a_resnet_run_trains_its_batch_statistics_and_resumes_exactly(
  resnet_run, raw_mnist, tmp_path
):
  state = latest(resnet_run)
  assert int(state.step) == 4
  norm = state.model_state["batch_stats"]["block_0"]["norm1"]
  assert not np.allclose(norm["mean"], 0.0) and not np.allclose(norm["var"], 1.0)  # trained

  resumed = tmp_path / "resumed"
  assert (
    cli.main(
      "fashion_mnist_resnet", ["--workdir", str(resumed), *toy_flags(raw_mnist, tmp_path, 2)]
    )
    == 0
  )
  assert (
    cli.main("fashion_mnist_resnet", ["--workdir", str(resumed), "--resume", "--total-iter", "4"])
    == 0
  )

  def without_times(rows):
    return [{k: v for k, v in row.items() if "time" not in k} for row in rows]

  assert without_times(read_rows(resumed)) == without_times(read_rows(resnet_run))
  both = latest(resumed), state
  assert jax.tree.structure(both[0]) == jax.tree.structure(both[1])
  for a, b in zip(*map(jax.tree.leaves, both), strict=True):
    np.testing.assert_array_equal(a, b)


@ON_RESNET_RUN
@pytest.mark.slow  # compacts and prunes a ResNet run (compiling their benchmarks)
def test_a_resnet_run_compacts_and_prunes_with_its_batch_statistics(resnet_run, tmp_path, capsys):
  out = tmp_path / "compact"
  assert compact.main([str(resnet_run), "--out", str(out), "--repeats", "1"]) == 0
  record = json.loads((out / run_folder.COMPACT_RECORD).read_text())
  assert record["check"]["max_abs_diff"] <= record["check"]["tolerance"]

  out = tmp_path / "pruned"
  assert prune.main([str(resnet_run), "--keep", "1,5,0", "--out", str(out), "--repeats", "1"]) == 0
  config = run_folder.read_config(out / run_folder.CONFIG)
  assert tuple(config.inner_widths) == (1, 5, 0)
  with ocp.StandardCheckpointer() as checkpointer:
    stats = checkpointer.restore((out / "model_state").absolute())["batch_stats"]
  assert stats["block_0"]["norm1"]["mean"].shape == (1,)
  assert stats["block_1"]["norm1"]["var"].shape == (5,)
  assert stats["block_1"]["norm2"]["var"].shape == (8,)  # block outputs keep their channels
  assert "norm1" not in stats["block_2"]


@ON_RESNET_RUN
@pytest.mark.slow  # trains two ResNet runs
def test_batch_statistics_are_the_global_batch_s_on_any_devices_under_shard_map_and_pmap(
  resnet_run, raw_mnist, tmp_path
):
  """The 2-device run (shard_map) is the 1-device run, and the 2-device run under pmap: each
  device's BatchNorms normalise by the whole batch's statistics, not by its half's."""
  for name, flags in (("one", ["--num-devices", "1"]), ("pmap", ["--parallel", "pmap"])):
    workdir = tmp_path / name
    argv = ["--workdir", str(workdir), *toy_flags(raw_mnist, tmp_path, 4), *flags]
    assert cli.main("fashion_mnist_resnet", argv) == 0
    # Agreement to 1e-7 measured; per-device statistics differ by up to 7e-4 (val_loss).
    assert_rows_close(read_rows(workdir), read_rows(resnet_run), rtol=1e-5)


def test_slimming_adds_l1_on_the_units_batch_norm_scales_only():
  """Network slimming's step is weight decay's plus lr·scale_l1·sign(γ_i) at the units' scales."""
  config = resnet_config()
  model = models.create_model(config)
  boxed, variables = random_variables(model)
  spec = models.family(config).group_spec(model, boxed["params"])
  params = variables["params"]
  grads = jax.tree.map(jnp.ones_like, params)
  schedule = optax.constant_schedule(0.1)
  steps = {}
  for method in ("wd", "slimming"):
    config.method, config.scale_l1 = method, 0.01
    tx = experiment.create_optimizer(config, spec, schedule)
    steps[method], _ = jax.jit(tx.update)(grads, tx.init(params), params)
  difference = jax.tree.map(lambda a, b: a - b, steps["slimming"], steps["wd"])
  flat = dict(jax.tree_util.tree_flatten_with_path(difference)[0])
  for path, value in flat.items():
    name = jax.tree_util.keystr(path)
    if name.endswith("['norm1']['scale']"):
      scale = params[path[0].key][path[1].key]["scale"]
      np.testing.assert_allclose(value, -0.1 * 0.01 * np.sign(scale), rtol=1e-5)
    else:
      np.testing.assert_array_equal(value, 0.0, err_msg=name)
  assert sum(jax.tree_util.keystr(p).endswith("['norm1']['scale']") for p in flat) == 3


def test_slimming_without_batch_norm_units_is_a_one_line_error(raw_mnist, tmp_path, capsys):
  workdir = tmp_path / "run"
  argv = ["--workdir", str(workdir), "--raw-data-dir", str(raw_mnist), "--allow-unofficial-data",
          "true", "--data-dir", str(tmp_path / "tfds"), "--features", "8,10", "--relu",
          "true,false", "--method", "slimming", "--progress", "false"]  # fmt: skip
  assert cli.main("mnist_subset_mlp", argv) == 2
  last = capsys.readouterr().err.splitlines()[-1]  # after the data set's preparation
  assert last.startswith("error: --method slimming penalises the units' BatchNorm scales")
  assert not workdir.exists()


# The tests that read slimming_run share one xdist worker: it is trained once.
ON_SLIMMING_RUN = pytest.mark.xdist_group("slimming_run")


@pytest.fixture(scope="module")
def slimming_run(raw_mnist, tmp_path_factory):
  """A 2-step network-slimming ResNet run."""
  tmp = tmp_path_factory.mktemp("slimming")
  argv = ["--workdir", str(tmp / "run"), *toy_flags(raw_mnist, tmp, 2), "--method", "slimming"]
  assert cli.main("fashion_mnist_resnet", argv) == 0
  return tmp / "run"


@ON_SLIMMING_RUN
@pytest.mark.slow  # trains a ResNet run and prunes it (compiling its benchmark)
def test_a_slimming_run_prunes_its_smallest_batch_norm_scales(slimming_run, tmp_path):
  run = slimming_run
  assert json.loads((run / "config.json").read_text())["scale_l1"] == 1e-5
  params = latest(run).params
  out = tmp_path / "pruned"
  argv = [str(run), "--keep", "2,3,1", "--score", "scale", "--out", str(out), "--repeats", "1"]
  assert prune.main(argv) == 0
  record = json.loads((out / prune.MARKER).read_text())
  assert record["score"] == "scale"
  for b, count in enumerate((2, 3, 1)):
    scale = np.abs(np.asarray(params[f"block_{b}"]["norm1"]["scale"]))
    assert record["kept"][str(b)] == sorted(np.argsort(-scale, kind="stable")[:count].tolist())

  # The fine-tune starts from the pruned model's function: its running statistics too.
  config = run_folder.read_config(out / run_folder.CONFIG)
  saved = latest(run).model_state["batch_stats"]["block_1"]["norm1"]
  start = experiment.Experiment([config], init_params_source=str(out / "params")).states[0]
  started = start.model_state["batch_stats"]["block_1"]["norm1"]
  kept = np.array(record["kept"]["1"])
  for name in ("mean", "var"):
    np.testing.assert_array_equal(started[name], np.asarray(saved[name])[kept])


@ON_SLIMMING_RUN
@pytest.mark.slow  # trains a ResNet run and prunes it (compiling its benchmark)
def test_target_flops_prunes_a_slimming_run_by_one_threshold_on_scale_per_flop(
  slimming_run, tmp_path
):
  out = tmp_path / "pruned"
  argv = [str(slimming_run), "--target-flops", "0.4", "--score", "scale", "--out", str(out),
          "--repeats", "1"]  # fmt: skip
  assert prune.main(argv) == 0
  record = json.loads((out / prune.MARKER).read_text())
  run = trained_run.restore_run(slimming_run)
  example = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
  model = models.create_model(run.config)
  costs = groups.unit_costs(model, run.params, example, run.groups, run.model_state)
  assert len(set(costs.values())) == 3  # the blocks' channels cost differently
  scales = {b: np.abs(np.asarray(run.params[f"block_{b}"]["norm1"]["scale"])) for b in range(3)}
  kept = {b: np.array(record["kept"][str(b)], int) for b in range(3)}
  # The global cut on |gamma_i| / c_g with the traced costs (the cut itself, a greedy that skips
  # a unit that no longer fits, is checked against one written by hand in test_budget.py).
  expected = pp.magnitude_masks(scales, pp.relative_costs(costs), 0.4)
  assert {b: np.flatnonzero(m).tolist() for b, m in expected.items()} == {
    b: k.tolist() for b, k in kept.items()
  }
  assert all(len(kept[b]) < len(scales[b]) for b in range(3))  # every block loses channels
  widths = {b: len(scales[b]) for b in range(3)}
  total = sum(costs[b] * widths[b] for b in range(3))
  flops_kept = sum(costs[b] * len(kept[b]) for b in range(3)) / total
  assert record["flops_kept"] == pytest.approx(flops_kept)
  cheapest_on = min(costs[b] for b in range(3) if len(kept[b]))
  assert 0.4 <= flops_kept < 0.4 + cheapest_on / total  # nothing left to the floor
  assert record["score"] == "scale" and record["kept_largest_unit"] == []
