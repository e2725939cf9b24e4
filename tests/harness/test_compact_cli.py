"""``python -m experiments.compact`` on tiny runs whose dead units are known."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

import pathprox_jax as pp
from experiments import checkpointing, cli, compact, models, run_folder, trained_run
from experiments import experiment as experiment_lib
from experiments.experiment import Experiment

TINY_MLP = ["--features", "32,32,32,32,32,10", "--train-per-class", "20", "--batch-size", "40",
            "--eval-batch-size", "200", "--progress", "false",
            "--allow-unofficial-data", "true"]  # fmt: skip


def read_output(out):
  """``(config, params, record)`` of a compact output folder, restored without a template."""
  config = ml_collections.ConfigDict(json.loads((out / "config.json").read_text()))
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore((out / "params").absolute())
  return config, params, json.loads((out / "compact.json").read_text())


def latest_params(run_dir):
  """The params of the run's latest checkpoint, restored as saved."""
  checkpoints = checkpointing.Checkpoints(run_dir / "checkpoints")
  params = checkpoints.manager.restore(checkpoints.latest_step()).state["params"]
  checkpoints.close()
  return params


def assert_same_outputs(sparse_config, sparse_params, out, x):
  """The saved compact model computes the sparse model's function on ``x``.

  To 1e-5 relative to the largest logit: dropping zero terms reorders f32 sums.
  """
  config, params, _ = read_output(out)
  with jax.default_matmul_precision("highest"):
    sparse = models.create_model(sparse_config).apply({"params": sparse_params}, x)
    small = models.create_model(config).apply({"params": params}, x)
  scale = max(1.0, float(np.abs(sparse).max()))
  np.testing.assert_allclose(small, sparse, atol=1e-5 * scale, rtol=0)


def printed_row(text, name):
  """The two numbers of a row of the printed table."""
  line = next(line for line in text.splitlines() if line.startswith(name))
  return [float(v.replace(",", "")) for v in line[len(name) :].split()[:2]]


def mlp_params(widths, inputs=784):
  return sum(i * o + o for i, o in zip((inputs, *widths[:-1]), widths, strict=True))


@pytest.fixture(scope="module")
def mlp_run(raw_mnist, tmp_path_factory):
  """A 100-step PathProx run whose strong λ has switched off some units of every group."""
  tmp = tmp_path_factory.mktemp("mlp")
  argv = TINY_MLP + ["--raw-data-dir", str(raw_mnist), "--data-dir", str(tmp / "tfds"),
                     "--weight-decay", "0.05", "--total-iter", "100", "--log-freq", "100",
                     "--save-freq", "100", "--workdir", str(tmp / "run")]  # fmt: skip
  assert cli.main("mnist_subset_mlp", argv) == 0
  return tmp / "run"


@pytest.fixture
def any_run(finished_run):
  """The session's finished 20-step run: the checks below need a run, not its dead units."""
  return finished_run[0]


@pytest.mark.slow  # trains a 100-step run (mlp_run)
def test_mlp_run_compacts_to_the_same_function(mlp_run, capsys):
  last = json.loads((mlp_run / "metrics.jsonl").read_text().splitlines()[-1])
  active = [last[f"active_units/g{g}"] for g in range(3)]
  assert last["active_units_pct"] < 100 and min(active) > 0

  assert compact.main([str(mlp_run), "--repeats", "2"]) == 0
  printed = capsys.readouterr().out
  config, _, record = read_output(mlp_run / "compact")
  widths = (active[0], 32, active[1], 32, active[2], 10)
  assert tuple(config.features) == widths and record["widths"] == {"features": list(widths)}
  assert [len(record["kept"][str(g)]) for g in range(3)] == active
  check = record["check"]  # on the test set, by the command itself: to 1e-5 of the largest logit
  assert check["max_abs_diff"] <= check["tolerance"] and check["sparse_acc"] == check["compact_acc"]
  run_config = ml_collections.ConfigDict(json.loads((mlp_run / "config.json").read_text()))
  x = jax.random.normal(jax.random.key(0), (64, 28, 28, 1))
  assert_same_outputs(run_config, latest_params(mlp_run), mlp_run / "compact", x)

  expected = [mlp_params((32,) * 5 + (10,)), mlp_params(widths)]
  assert printed_row(printed, "parameters") == expected
  assert [record["parameters"]["sparse"], record["parameters"]["compact"]] == expected
  sparse_flops, compact_flops = printed_row(printed, "FLOPs / example (XLA)")
  assert sparse_flops > compact_flops > 0
  assert "max |logit difference|" in printed and "batch 1,000: examples / s" in printed


def test_output_folder_is_never_replaced(tmp_path, capsys):
  foreign = tmp_path / "notes"
  foreign.mkdir()
  (foreign / "keep.txt").write_text("mine")
  assert compact.main([str(tmp_path / "run"), "--out", str(foreign)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "exists and is not empty; outputs are never replaced" in err
  assert [p.name for p in foreign.iterdir()] == ["keep.txt"]

  out = tmp_path / "compact"
  out.mkdir()  # an empty folder takes an output
  trained_run.check_output_folder(out)
  config = ml_collections.ConfigDict({"model": "mlp"})
  trained_run.write_output(out, config, {"w": jnp.ones(2)}, {}, run_folder.COMPACT_RECORD)
  with pytest.raises(trained_run.UsageError, match="outputs are never replaced"):
    trained_run.check_output_folder(out)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["compact", "notes"]


@pytest.mark.slow
def test_compaction_that_changes_outputs_fails(any_run, tmp_path, monkeypatch, capsys):
  real = pp.compact

  def off_by_a_little(params, groups, atol):
    small, kept = real(params, groups, atol=atol)
    return jax.tree.map(lambda p: p * 1.001, small), kept

  monkeypatch.setattr(pp, "compact", off_by_a_little)
  assert compact.main([str(any_run), "--out", str(tmp_path / "out")]) == 1
  assert "outputs differ from the sparse model's" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_group_without_units_is_an_error(any_run, tmp_path, capsys):
  assert compact.main([str(any_run), "--atol", "1e9", "--out", str(tmp_path / "out")]) == 1
  assert "group 0 has no units left" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


@pytest.mark.slow  # trains a VGG run
def test_vgg_run_with_zeroed_units_compacts(raw_cifar, tmp_path, capsys):
  argv = ["--workdir", str(tmp_path / "run"), "--raw-data-dir", str(raw_cifar),
          "--allow-unofficial-data", "true",
          "--data-dir", str(tmp_path / "tfds"), "--channels", "8,8,8,8", "--pool-after", "1,3",
          "--val-size", "20", "--batch-size", "16", "--total-iter", "2", "--log-freq", "2",
          "--save-freq", "2", "--eval-batch-size", "40", "--num-devices", "1",
          "--progress", "false"]  # fmt: skip
  assert cli.main("cifar_vgg", argv) == 0
  config, run_dir, _ = cli.parse_args("cifar_vgg", argv)
  # Switches off units 1, 4, 6 of group 0 and 0, 7 of group 1: zero rows (axis -2)
  # of the groups' "out" convs, saved as a new latest checkpoint.
  experiment = Experiment([config])
  checkpoints = checkpointing.Checkpoints(tmp_path / "run" / "checkpoints")
  state, key, history = checkpoints.restore_latest(experiment.states[0], experiment.data_keys[0])
  params = dict(state.params)
  for layer, units in (("Conv_1", [1, 4, 6]), ("Conv_3", [0, 7])):
    params[layer] = {**params[layer], "kernel": params[layer]["kernel"].at[..., units, :].set(0)}
  assert checkpoints.save(state._replace(step=jnp.int32(3), params=params), key, history)
  checkpoints.close()

  assert compact.main([run_dir, "--repeats", "1"]) == 0
  assert "checkpoint at step 3 of 2" in capsys.readouterr().out
  out = tmp_path / "run" / "compact"
  small_config, _, record = read_output(out)
  assert record["kept"] == {"0": [0, 2, 3, 5, 7], "1": [1, 2, 3, 4, 5, 6]}
  assert tuple(small_config.channels) == (5, 8, 6, 8)
  x = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
  assert_same_outputs(config, params, out, x)


@pytest.mark.parametrize(
  "files, message",
  [
    ((), "is not a run folder: it has no config.json"),
    (("config.json",), "has no checkpoint: no checkpoints/ folder"),
    (("config.json", "checkpoints/"), "has no checkpoint: checkpoints/ is empty"),
  ],
)
def test_folder_without_a_checkpoint_is_a_one_line_error(files, message, tmp_path, capsys):
  for name in files:
    if name.endswith("/"):
      (tmp_path / name).mkdir()
    else:
      (tmp_path / name).write_text("{}")
  before = sorted(p.name for p in tmp_path.iterdir())
  assert compact.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path} ") and message in err
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_config_of_no_known_experiment_is_a_one_line_error(any_run, tmp_path, capsys):
  shutil.copytree(any_run / "checkpoints", tmp_path / "checkpoints")
  (tmp_path / "config.json").write_text('{"experiment": "imagenet_vit"}')
  assert compact.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "config.json is not a run's config.json" in err
  assert "unknown experiment 'imagenet_vit'" in err


def test_restore_needs_no_experiment_and_reads_the_test_and_validation_sets(any_run, monkeypatch):
  def no_experiment(config):
    raise AssertionError("compact built an Experiment")

  read = []
  load_arrays = trained_run.data.load_arrays

  def recorded(name, **kwargs):
    read.append(tuple(kwargs["splits"]))
    return load_arrays(name, **kwargs)

  monkeypatch.setattr(experiment_lib, "Experiment", no_experiment)
  monkeypatch.setattr(trained_run.data, "load_arrays", recorded)
  run = trained_run.restore_run(any_run)
  assert read == [("train", "test")]  # the validation set is cut from the training split
  assert run.step == 20 and len(run.test_labels) == 100 and len(run.val_labels) == 400
  expected = latest_params(any_run)
  jax.tree.map(np.testing.assert_array_equal, run.params, expected)


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("lr", "fast", "lr is 'fast', expected float"),
    ("features", [32, "wide", 32, 32, 32, 10], "features is 'wide', expected int"),
    ("progress", 1, "progress is 1, expected bool"),
    ("relu", True, "relu is True, expected list"),
  ],
)
def test_config_value_of_the_wrong_type_is_a_one_line_error(
  any_run, tmp_path, capsys, key, value, message
):
  shutil.copytree(any_run / "checkpoints", tmp_path / "checkpoints")
  record = json.loads((any_run / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**record, key: value}))
  before = sorted(p.name for p in tmp_path.iterdir())
  assert compact.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "config.json is not a run's config.json" in err
  assert message in err
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_config_that_is_not_utf8_is_a_one_line_error(any_run, tmp_path, capsys):
  shutil.copytree(any_run / "checkpoints", tmp_path / "checkpoints")
  (tmp_path / "config.json").write_bytes(b'{"experiment": "mnist_subset_mlp\xff"}')
  assert compact.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "config.json is not UTF-8 text (byte 0xff" in err
  assert not (tmp_path / "compact").exists()


@pytest.mark.parametrize("key, value", [("features", [16, 32, 32, 32, 32, 10]), ("method", "wd")])
def test_checkpoint_that_does_not_fit_the_config_is_a_one_line_error(
  any_run, tmp_path, capsys, key, value
):
  shutil.copytree(any_run / "checkpoints", tmp_path / "checkpoints")
  record = json.loads((any_run / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**record, key: value}))
  assert compact.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "the latest checkpoint does not fit the model and method in its config.json" in err
  assert not (tmp_path / "compact").exists()
