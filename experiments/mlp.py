"""The paper's MLP with PathProx group annotations, in linen and NNX, and its folding for inference.

Its Dense layers pair into groups as a chain (:mod:`experiments.chain`). :data:`FAMILY` is what
the harness knows of it (config keys ``features`` and ``relu``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import pathprox_jax as pp
from experiments.chain import compacted_widths, layer_group
from experiments.config_checks import check, check_widths, format_value
from experiments.dataset_facts import DATASETS
from experiments.family import Family


def pytorch_linear_init(fan_in: int) -> jax.nn.initializers.Initializer:
  """PyTorch's default ``nn.Linear`` initializer, for its kernel and its bias alike.

  .. math::
    \\theta \\sim \\mathcal{U}\\big(-1/\\sqrt{\\text{fan\\_in}},\\ 1/\\sqrt{\\text{fan\\_in}}\\big)

  The bias's own shape does not give the fan-in, hence the argument.

  Args:
    fan_in: the layer's number of inputs.

  Returns:
    An initializer ``(key, shape, dtype) -> array``.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _linen_inits(spec: pp.GroupSpec | None, kernel_init, bias_init) -> dict[str, Any]:
  if spec is None:
    return {"kernel_init": kernel_init, "bias_init": bias_init}
  return pp.group_inits(spec.group, spec.role, kernel_init, bias_init)


def _check_mlp(features: Sequence[int], relu: Sequence[bool]) -> None:
  if len(features) != len(relu):
    raise ValueError(
      f"MLP needs one relu flag per layer: got {len(features)} features {tuple(features)} "
      f"and {len(relu)} relu flags {tuple(relu)}."
    )


class MLP(nn.Module):
  """A PathProx-annotated MLP on flattened inputs, with PyTorch's default init.

  Attributes:
    features: the output width of every Dense layer; the last is the number of classes.
    relu: whether a ReLU follows layer ``i``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import pathprox_jax as pp
    >>> from experiments import mlp
    >>> model = mlp.MLP((400, 400, 400, 400, 400, 10), (True, False) * 3)
    >>> boxed = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    >>> pp.group_spec(boxed)["Dense_5"]["kernel"]
    GroupSpec(group=2, role='out')
  """

  features: Sequence[int]
  relu: Sequence[bool]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_mlp(self.features, self.relu)
    x = x.reshape(x.shape[0], -1)
    for i, (width, relu) in enumerate(zip(self.features, self.relu, strict=True)):
      init = pytorch_linear_init(x.shape[-1])
      x = nn.Dense(width, **_linen_inits(layer_group(i, len(self.features)), init, init))(x)
      if relu:
        x = nn.relu(x)
    return x


def fold_linear_layers(model: MLP, params: Mapping[str, Any]) -> tuple[MLP, dict[str, Any]]:
  """An MLP's function with fewer products: its linear bottlenecks multiplied out.

  Two Dense layers with no ReLU between them are one affine map,

  .. math::
    (x K_i + b_i) K_{i+1} + b_{i+1} = x (K_i K_{i+1}) + (b_i K_{i+1} + b_{i+1}),

  and the product costs ``in · out`` multiply-adds per example against
  ``(in + out) · mid`` for the two layers. A layer is folded into the next when
  that is fewer: the factorised MLP's 400-400-400 bottlenecks cost half. The
  outputs equal ``model``'s to round-off. This is for inference only: training
  needs the factors, which are what PathProx regularises.

  Args:
    model: the MLP.
    params: its parameters, unboxed (leading batch axes are fine, as under ``vmap``).

  Returns:
    The folded MLP and its parameters (``Dense_0``, ``Dense_1``, ... renumbered).
  """
  _check_mlp(model.features, model.relu)
  folded = []  # (width, relu, params) of each layer of the folded MLP
  for i, (width, relu) in enumerate(zip(model.features, model.relu, strict=True)):
    layer = params[f"Dense_{i}"]
    if folded and not folded[-1][1]:
      mid, _, first = folded[-1]
      inputs = first["kernel"].shape[-2]
      if inputs * width < (inputs + width) * mid:
        folded.pop()
        bias = jnp.einsum("...m,...mo->...o", first["bias"], layer["kernel"]) + layer["bias"]
        layer = {"kernel": first["kernel"] @ layer["kernel"], "bias": bias}
    folded.append((width, relu, layer))
  net = MLP(features=tuple(w for w, _, _ in folded), relu=tuple(r for _, r, _ in folded))
  return net, {f"Dense_{i}": layer for i, (_, _, layer) in enumerate(folded)}


class NNXMLP(nnx.Module):
  """:class:`MLP` in NNX: same layers, init, annotations and parameter names.

  Layer ``i`` is the attribute ``Dense_{i}``, linen's automatic name, so a
  linen params dict is a pure dict of this model's ``nnx.Param`` state.

  Example:
    >>> from flax import nnx
    >>> import pathprox_jax as pp
    >>> from experiments import mlp
    >>> model = mlp.NNXMLP(784, (400, 400, 10), (True, True, False), rngs=nnx.Rngs(0))
    >>> pp.group_spec(nnx.state(model, nnx.Param))["Dense_0"]["bias"]
    GroupSpec(group=0, role='in')
  """

  def __init__(
    self, in_features: int, features: Sequence[int], relu: Sequence[bool], *, rngs: nnx.Rngs
  ):
    _check_mlp(features, relu)
    self.relu = tuple(relu)
    for i, (fan_in, width) in enumerate(zip((in_features, *features[:-1]), features, strict=True)):
      spec = layer_group(i, len(features))
      metadata = {} if spec is None else pp.group_metadata(spec.group, spec.role)
      init = pytorch_linear_init(fan_in)
      layer = nnx.Linear(
        fan_in,
        width,
        kernel_init=init,
        bias_init=init,
        kernel_metadata=metadata,
        bias_metadata=metadata,
        rngs=rngs,
      )
      setattr(self, f"Dense_{i}", layer)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for i, relu in enumerate(self.relu):
      x = getattr(self, f"Dense_{i}")(x)
      if relu:
        x = nnx.relu(x)
    return x


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses ``features`` and ``relu`` that make no MLP for the config's data set."""
  widths = config.features
  check(
    len(config.relu) == len(widths),
    f"--relu has {len(config.relu)} entries but --features has {len(widths)}",
  )
  check_widths("features", widths, least=1)
  classes = DATASETS[config.dataset].classes
  check(
    len(widths) > 1,
    f"--features: an MLP needs at least one hidden layer before its {classes} outputs, got "
    f"{format_value(widths)}",
  )
  check(
    widths[-1] >= classes,
    f"--features: the last width is the number of outputs and must be >= the {classes} "
    f"classes of {config.dataset}, got {widths[-1]}",
  )


FAMILY = Family(
  create=lambda config: MLP(features=tuple(config.features), relu=tuple(config.relu)),
  check_config=check_config,
  widths_keys=("features",),
  compacted_widths=lambda config, kept: {"features": compacted_widths(config.features, kept)},
  fold=fold_linear_layers,
)
