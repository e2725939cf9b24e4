"""Checkpoints: a failed restore leaves no global state behind."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import load_config
from experiments import checkpointing, init_params, run_folder, trained_run
from experiments.train_step import TrainState


def test_a_failed_restore_puts_back_the_unraisable_hook(tmp_path):
  state = TrainState(jnp.int32(1), {"w": jnp.ones(3)}, (), {})
  checkpoints = checkpointing.Checkpoints(tmp_path / "checkpoints")
  checkpoints.save(state, jax.random.key(0), [])
  checkpoints.manager.wait_until_finished()
  for path in (tmp_path / "checkpoints" / "1" / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:7])  # truncated arrays: the restore fails
  hook = sys.unraisablehook
  with pytest.raises(checkpointing.NoReadableCheckpointError):
    checkpoints.restore_latest(state, jax.random.key(0))
  checkpoints.close()
  assert sys.unraisablehook is hook


def test_a_state_without_model_state_is_saved_as_before(tmp_path):
  """Runs of models without state write and read the checkpoints of before the model state."""
  before = {"step": jnp.int32(3), "params": {"w": jnp.ones(3)}, "opt_state": ()}
  checkpoints = checkpointing.Checkpoints(tmp_path / "checkpoints")
  checkpoints.manager.save(  # a checkpoint as the harness wrote it before: no model state
    3,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(before),
      data_key=ocp.args.StandardSave({"key": jax.random.key_data(jax.random.key(0))}),
      history=ocp.args.JsonSave([{"step": 3}]),
    ),
  )
  checkpoints.manager.wait_until_finished()
  template = TrainState(jnp.int32(0), {"w": jnp.zeros(3)}, (), {})
  state, _, history = checkpoints.restore_latest(template, jax.random.key(0))
  assert isinstance(state, TrainState) and state.model_state == {} and history == [{"step": 3}]
  np.testing.assert_array_equal(state.params["w"], np.ones(3))
  checkpoints.save(state._replace(step=jnp.int32(4)), jax.random.key(0), history)
  checkpoints.close()
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "4").iterdir()) == sorted(
    p.name for p in (tmp_path / "checkpoints" / "3").iterdir()
  )
  metadata = [
    json.loads((tmp_path / "checkpoints" / str(s) / "state" / "_METADATA").read_text())
    for s in (3, 4)
  ]
  assert metadata[0]["tree_metadata"] == metadata[1]["tree_metadata"]


def test_the_model_state_is_saved_and_restored(tmp_path):
  stats = {"batch_stats": {"norm": {"mean": jnp.arange(3.0), "var": jnp.full(3, 2.0)}}}
  state = TrainState(jnp.int32(2), {"w": jnp.ones(3)}, (), stats)
  checkpoints = checkpointing.Checkpoints(tmp_path / "checkpoints")
  checkpoints.save(state, jax.random.key(0), [])
  checkpoints.wait()
  template = jax.tree.map(jnp.zeros_like, state)
  restored, _, _ = checkpoints.restore_latest(template, jax.random.key(0))
  checkpoints.close()
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  assert isinstance(restored, TrainState)


def test_the_model_state_beside_init_params_is_restored_where_it_fits(tmp_path):
  stats = {"batch_stats": {"norm": {"mean": jnp.arange(3.0), "var": jnp.full(3, 2.0)}}}
  params = {"w": jnp.ones(3)}
  config = load_config("fashion_mnist_resnet")
  trained_run.write_output(tmp_path / "out", config, params, {}, run_folder.COMPACT_RECORD, stats)
  source = str(tmp_path / "out" / "params")
  fresh = jax.tree.map(jnp.zeros_like, stats)
  restored = init_params.restore_init_model_state(source, fresh)
  jax.tree.map(np.testing.assert_array_equal, restored, stats)
  assert init_params.restore_init_model_state("", fresh) is fresh  # no --init-params
  assert init_params.restore_init_model_state(source, {}) == {}  # a model without state
  wider = {"batch_stats": {"norm": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}}
  with pytest.raises(init_params.InitParamsError, match="model_state/ beside it does not fit"):
    init_params.restore_init_model_state(source, wider)
