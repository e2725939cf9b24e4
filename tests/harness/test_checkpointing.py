"""Checkpoints: a failed restore leaves no global state behind."""

import sys

import jax
import jax.numpy as jnp
import pytest

from experiments import checkpointing
from experiments.train_step import TrainState


def test_a_failed_restore_puts_back_the_unraisable_hook(tmp_path):
  state = TrainState(jnp.int32(1), {"w": jnp.ones(3)}, ())
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
