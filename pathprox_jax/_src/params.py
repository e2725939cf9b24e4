"""Reading a params pytree: NNX Variables unwrapped, leaf paths, and which leaves are kernels.

The kernel rule is the one place that decides which parameters are weight matrices (decayed by
ordinary weight decay, and the weights of a unit) and which are biases, scales or scalars; the
scale rule says which vectors are a BatchNorm's per-channel scale, a unit's weights too.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from flax.core import meta


def is_boxed(x: Any) -> bool:
  """Whether ``x`` is a parameter with metadata: a linen box or an NNX Variable."""
  return isinstance(x, (meta.AxisMetadata, nnx.Variable))


def unwrap_variables(tree: Any) -> Any:
  """Replaces NNX Variables by their values (``nnx.Optimizer`` passes Variables to init)."""
  return jax.tree.map(
    lambda x: x.get_value() if isinstance(x, nnx.Variable) else x,
    tree,
    is_leaf=lambda x: isinstance(x, nnx.Variable),
  )


def key_name(key: Any) -> str:
  """One step of a pytree path as text: a dict key, attribute name or sequence index."""
  for attribute in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def path_string(path: tuple[Any, ...]) -> str:
  """A leaf's path joined by "/", e.g. ``"Block_0/MultiHeadDotProductAttention_0/value/kernel"``."""
  return "/".join(key_name(key) for key in path)


def is_kernel(path: tuple[Any, ...], param: Any) -> bool:
  """The kernel rule: a parameter with two or more dimensions that is not named ``bias``.

  Dense, Conv and attention kernels, embeddings and position embeddings are kernels; biases
  (including a ``DenseGeneral`` bias of shape ``[heads, head_dim]``), norm scales and scalars are
  not. Ordinary weight decay applies to kernels only, and a PathProx unit's weights are kernels.

  Args:
    path: the leaf's pytree path (``jax.tree_util.tree_map_with_path`` gives it).
    param: the leaf (an array or anything with ``ndim``).

  Returns:
    Whether the leaf is a kernel.
  """
  return param.ndim >= 2 and not (path and key_name(path[-1]) == "bias")


def is_norm_scale(path: tuple[Any, ...], param: Any) -> bool:
  """The scale rule: a one-dimensional parameter named ``scale``, a BatchNorm's :math:`\\gamma`.

  Grouped with role "in", it holds a unit's input weight (one number per channel), as a
  kernel's column does for a Dense unit (see :func:`pathprox_jax.batch_norm_inits`). It is not a
  kernel: ordinary weight decay leaves it alone.

  Args:
    path: the leaf's pytree path.
    param: the leaf (an array or anything with ``ndim``).

  Returns:
    Whether the leaf is a normalisation's scale.
  """
  return param.ndim == 1 and bool(path) and key_name(path[-1]) == "scale"


def kernel_mask(params: Any) -> Any:
  """The kernel rule over a params pytree: ``True`` at kernels, ``False`` elsewhere.

  Pass it as the mask of ordinary weight decay, e.g. the baseline PathProx is compared with.

  Args:
    params: (unboxed) params, or an NNX ``State`` (Variables are read through).

  Returns:
    A pytree of bools with the structure of ``params`` (NNX Variables replaced by values).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import pathprox_jax
    >>> params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
    ...           "attn": {"bias": jnp.zeros((2, 4))}}
    >>> pathprox_jax.kernel_mask(params)
    {'attn': {'bias': False}, 'dense': {'bias': False, 'kernel': True}}
    >>> weight_decay = optax.add_decayed_weights(1e-4, mask=pathprox_jax.kernel_mask)
  """
  return jax.tree_util.tree_map_with_path(is_kernel, unwrap_variables(params))
