"""Per-unit norms and scales: unit ``j`` of a parameter is its slice ``j`` on the unit axis.

All arithmetic is in float32, whatever the parameter's dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from pathprox_jax._src.groups import GroupLayout


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


def scale_units(x: jax.Array, scale: jax.Array, axis: int) -> jax.Array:
  """Multiplies unit ``j``'s slice of ``x`` (on ``axis``) by ``scale[j]``, in f32."""
  shape = [1] * x.ndim
  shape[axis] = -1
  return x.astype(jnp.float32) * scale.reshape(shape)


def unit_path_norms(
  leaves: Sequence[jax.Array] | Mapping[int, jax.Array], group: GroupLayout
) -> jax.Array:
  """Each unit's path norm :math:`\\|w_i\\| \\|v_i\\|` in a group (weights only, f32).

  Args:
    leaves: the flat params (or a mapping holding the group's leaves).
    group: the group's layout.
  """
  return unit_norms(leaves[group.in_kernel], group.in_axis) * unit_norms(
    leaves[group.out_kernel], group.out_axis
  )
