"""Per-unit norms and scales: unit ``j`` of a parameter is its slice ``j`` on the unit axis.

All arithmetic is in float32, whatever the parameter's dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from pathprox_jax._src.groups import GroupLayout

EPS = 1e-6  # the default clip of every norm a scale divides by (PathProx's epsilon)


def unit_norms(x: jax.Array, axis: int) -> jax.Array:
  """:math:`\\|x_j\\|` for every unit ``j``: the norm over all axes but ``axis``, in f32.

  Args:
    x: a kernel or bias.
    axis: its unit axis (non-negative).

  Returns:
    Shape ``[x.shape[axis]]``.
  """
  x = x.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(x * x, axis=tuple(a for a in range(x.ndim) if a != axis)))


@dataclasses.dataclass(frozen=True)
class ScaledUnits:
  """A parameter times a scale per unit (or one scale), not yet multiplied out.

  The prox's stages (balance, normalisation, soft-threshold) each rescale units. Keeping the
  scales apart from the array lets every stage read the current norms as
  ``|scale| * ||value_j||`` (a norm is positively homogeneous) from the norms of the
  unchanged array, computed once, and :meth:`array` touches the array once, after the last
  stage.

  Attributes:
    value: the parameter as given.
    axis: its unit axis, or ``None`` for a parameter scaled as a whole (an "out" bias).
    scale: a scalar or one scale per unit (f32).
    value_norms: ``unit_norms(value, axis)`` once computed (:meth:`times` carries it on).
  """

  value: jax.Array
  axis: int | None
  scale: jax.Array | float = 1.0
  value_norms: jax.Array | None = None

  def norms(self) -> jax.Array:
    """The current per-unit norms, f32."""
    value_norms = (
      unit_norms(self.value, self.axis) if self.value_norms is None else self.value_norms
    )
    return jnp.abs(self.scale) * value_norms

  def times(self, scale: jax.Array | float) -> ScaledUnits:
    """This parameter with every unit's scale multiplied by ``scale`` (per unit, or one)."""
    return dataclasses.replace(self, scale=self.scale * scale)

  def broadcast_scale(self) -> jax.Array:
    """The scale, f32, shaped to broadcast against ``value`` (a scalar stays a scalar)."""
    scale = jnp.asarray(self.scale, jnp.float32)
    if scale.ndim == 0:
      return scale
    shape = [1] * self.value.ndim
    shape[self.axis] = -1
    return scale.reshape(shape)

  def array(self) -> jax.Array:
    """The scaled parameter, f32."""
    return self.value.astype(jnp.float32) * self.broadcast_scale()


def scaled_groups(
  leaves: Sequence[jax.Array] | Mapping[int, jax.Array], layouts: Sequence[GroupLayout]
) -> dict[int, ScaledUnits]:
  """The grouped leaves ("in" and "out" kernels and biases) as :class:`ScaledUnits`, scale one."""
  scaled = {}
  for g in layouts:
    for i, axis in g.unit_axes.items():
      # Every stage reads the kernels' norms: compute them once, here.
      kernel = i in (g.in_kernel, g.out_kernel)
      scaled[i] = ScaledUnits(
        leaves[i], axis, value_norms=unit_norms(leaves[i], axis) if kernel else None
      )
  return scaled


Stage = Callable[[Mapping[int, ScaledUnits]], Mapping[int, ScaledUnits]]


def run_stages(
  leaves: Sequence[jax.Array] | Mapping[int, jax.Array],
  layouts: Sequence[GroupLayout],
  stages: Sequence[Stage],
) -> dict[int, ScaledUnits]:
  """Runs rescaling stages one after another; returns the leaves they changed, with their
  scales not yet multiplied out.

  Each stage maps the current :class:`ScaledUnits` of the grouped leaves to the ones it
  rescales.
  """
  current = scaled_groups(leaves, layouts)
  changed = set()
  for stage in stages:
    new = stage(current)
    current.update(new)
    changed.update(new)
  return {i: current[i] for i in changed}


def apply_stages(
  leaves: Sequence[jax.Array] | Mapping[int, jax.Array],
  layouts: Sequence[GroupLayout],
  stages: Sequence[Stage],
) -> dict[int, jax.Array]:
  """:func:`run_stages` with each changed leaf multiplied out once, at the end (f32)."""
  return multiply_out(run_stages(leaves, layouts, stages))


def multiply_out(scaled: Mapping[int, ScaledUnits]) -> dict[int, jax.Array]:
  """``{leaf index: the scaled leaf}`` (f32): each leaf times its scales."""
  return {i: leaf.array() for i, leaf in scaled.items()}


def unit_path_norms(leaves: Mapping[int, ScaledUnits], group: GroupLayout) -> jax.Array:
  """Each unit's path norm :math:`\\|w_i\\| \\|v_i\\|` in a group (weights only, f32)."""
  return leaves[group.in_kernel].norms() * leaves[group.out_kernel].norms()
