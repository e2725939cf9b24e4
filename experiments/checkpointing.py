"""Orbax checkpoints of a run: state, data-order key and metrics history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


def latest_step(directory: Path) -> int | None:
  """The step of the latest checkpoint in ``directory`` (None: none, or no such folder)."""
  if not Path(directory).is_dir():
    return None
  manager = ocp.CheckpointManager(Path(directory).absolute())
  step = manager.latest_step()
  manager.close()
  return step


class Checkpoints:
  """Saves every ``save_freq`` steps and at the end; restores against an abstract target.

  Saves are asynchronous; :meth:`close` waits for them. Parameters that are not
  all finite are never saved, so the last checkpoint is always a good one.
  """

  def __init__(self, directory: Path, max_to_keep: int = 3):
    self.manager = ocp.CheckpointManager(
      Path(directory).absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: Any, data_key: jax.Array, history: list[dict[str, Any]]) -> bool:
    """Saves ``state`` (a TrainState) unless a parameter is non-finite; returns whether it did."""
    finite = jax.tree.reduce(
      lambda ok, p: ok & jnp.all(jnp.isfinite(p)), state.params, jnp.bool_(True)
    )
    if not bool(finite):
      return False
    self.manager.save(
      int(state.step),
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_key=ocp.args.StandardSave({"key": jax.random.key_data(data_key)}),
        history=ocp.args.JsonSave(history),
      ),
    )
    return True

  def restore_latest(self, template: Any, data_key: jax.Array):
    """``(state, data_key, history)`` from the latest checkpoint, or None if there is none."""
    step = self.manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    key_template = {"key": ocp.utils.to_shape_dtype_struct(jax.random.key_data(data_key))}
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data_key=ocp.args.StandardRestore(key_template),
        history=ocp.args.JsonRestore(),
      ),
    )
    key = jax.random.wrap_key_data(restored.data_key["key"])
    return restored.state, key, list(restored.history)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
