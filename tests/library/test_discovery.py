"""Groups discovered from the trace: the project's models, user-style models, and refusals."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pathprox_jax as pp
from configs import cifar_vgg
from experiments import models

G = pp.GroupSpec
IMAGES = jnp.zeros((2, 28, 28, 1))


def _init(model, x, **kwargs):
  """The model's params, initialised by one compiled program (not op by op)."""
  return jax.jit(functools.partial(model.init, **kwargs))(jax.random.key(0), x)["params"]


def _linen(model):
  return lambda p, *a, **k: model.apply({"params": p}, *a, **k)


def _renumbered(groups):
  """The spec tree with groups numbered by first appearance: equal up to group numbering."""
  order = {}
  for spec in jax.tree.leaves(groups):
    order.setdefault(spec.group, len(order))
  return jax.tree.map(lambda s: G(order[s.group], s.role, s.unit_axis), groups)


def _same_step(params, found, expected, x, loss_fn):
  """One pathprox_sgd step with the discovered groups equals one with the expected groups."""
  grads = jax.jit(jax.grad(loss_fn))(params, x)
  steps = []
  for groups in (found, expected):
    tx = pp.pathprox_sgd(0.1, 1e-2, groups, balance=False)
    step = jax.jit(lambda p, g, tx=tx: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))
    steps.append(step(params, grads))
  jax.tree.map(np.testing.assert_array_equal, *steps)


# The project's models: exactly today's annotations and path rules.


@pytest.mark.slow
@pytest.mark.parametrize(
  "features, relu",
  [((40, 40, 40, 40, 40, 10), (True, False) * 3), ((40, 40, 10), (True, True, False))],
  ids=["factorised", "mlp"],
)
def test_project_mlps(features, relu):
  model = models.MLP(features, relu)
  boxed = _init(model, IMAGES)
  report = pp.explain_groups(model.apply, nn.meta.unbox(boxed), IMAGES)
  assert _renumbered(report.groups) == pp.group_spec(boxed)
  assert report.groups == pp.group_spec(boxed)  # numbered in forward order too
  assert report.chains == (tuple(range(len(features) // 2)),)
  assert report.balance == (report.chains if len(features) > 3 else False)


def test_project_vgg_is_one_chain():
  config = cifar_vgg.get_config()
  model = models.VGG(config.channels, config.pool_after)
  x = jnp.zeros((2, 32, 32, 3))
  boxed = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  report = pp.explain_groups(model.apply, nn.meta.unbox(boxed), x)
  assert report.groups == pp.group_spec(boxed)
  assert report.chains == (tuple(range(len(config.channels) // 2)),) == report.balance


@pytest.mark.slow
def test_project_vit_heads_and_neurons():
  model = models.ViT(num_heads=(2, 2), mlp_dim=(8, 8), width=16, head_dim=4)
  boxed = _init(model, IMAGES)
  report = pp.explain_groups(model.apply, nn.meta.unbox(boxed), IMAGES)
  assert report.groups == model.group_spec(boxed)
  assert report.chains == ((0,), (1,), (2,), (3,)) and report.balance is False
  text = str(report)
  assert "head/kernel (16, 10): no group: its outputs are also an output" in text
  assert 'block_0/attention/out/kernel (2, 4, 16): group 0 "out"' in text


@pytest.mark.slow
def test_project_nnx_mlp_drives_nnx_optimizer():
  model = models.NNXMLP(784, (40, 40, 10), (True, True, False), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  groups = pp.discover_groups(lambda s, x: nnx.merge(graphdef, s)(x), state, IMAGES)
  assert isinstance(groups, nnx.State)
  assert groups == pp.group_spec(state)
  optimizer = nnx.Optimizer(model, pp.pathprox_sgd(0.1, 1e-2, groups), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.sum(m(IMAGES + 1.0) ** 2))(model)
    optimizer.update(model, grads)

  train_step(model, optimizer)


# Models written the way users write them, without annotations.


@pytest.mark.slow
def test_sequential_mlp():
  model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(16), nn.relu, nn.Dense(3)])
  x = jnp.ones((4, 5))
  params = _init(model, x)
  groups = pp.discover_groups(model.apply, params, x)
  expected = {
    "layers_0": {"kernel": G(0, "in"), "bias": G(0, "in")},
    "layers_2": {"kernel": G(0, "out"), "bias": G(0, "out")},
    "layers_4": {"kernel": None, "bias": None},
  }
  assert groups == expected
  _same_step(params, groups, expected, x, lambda p, x: jnp.sum(model.apply({"params": p}, x)))


class CNN(nn.Module):
  """flax's MNIST example CNN."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(features=8, kernel_size=(3, 3))(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = nn.Conv(features=16, kernel_size=(3, 3))(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(features=32)(x)
    x = nn.relu(x)
    return nn.Dense(features=10)(x)


@pytest.mark.slow
def test_flax_mnist_cnn():
  model = CNN()
  x = jnp.linspace(0.0, 1.0, 2 * 12 * 12).reshape(2, 12, 12, 1)
  params = _init(model, x)
  report = pp.explain_groups(model.apply, params, x)
  expected = {
    "Conv_0": {"kernel": G(0, "in"), "bias": G(0, "in")},
    "Conv_1": {"kernel": G(0, "out"), "bias": G(0, "out")},
    "Dense_0": {"kernel": G(1, "in"), "bias": G(1, "in")},
    "Dense_1": {"kernel": G(1, "out"), "bias": G(1, "out")},
  }
  assert report.groups == expected
  assert report.chains == ((0, 1),)  # Conv_1 -> relu -> pool -> flatten -> Dense_0 scales along
  print(report)
  loss = lambda p, x: jnp.sum(model.apply({"params": p}, x) ** 2)  # noqa: E731
  _same_step(params, report.groups, expected, x, loss)


class NNXMLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(5, 16, rngs=rngs)
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def test_nnx_mlp():
  model = NNXMLP(nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  x = jnp.ones((4, 5))
  groups = pp.discover_groups(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
  expected = {
    "hidden": {"kernel": G(0, "in"), "bias": G(0, "in")},
    "out": {"kernel": G(0, "out"), "bias": G(0, "out")},
  }
  assert nnx.to_pure_dict(groups) == expected


class DenseGeneralEinsum(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.DenseGeneral(features=(4, 8))(x))  # 4 units of 8 features each
    x = nn.DenseGeneral(features=12, axis=(-2, -1))(x)
    x = nn.relu(nn.Einsum((12, 6), "...i,io->...o")(x))
    return nn.Einsum((6, 3), "...i,io->...o", use_bias=False)(x)


@pytest.mark.slow
def test_dense_general_and_einsum():
  model = DenseGeneralEinsum()
  x = jnp.ones((4, 5))
  params = _init(model, x)
  groups = pp.discover_groups(model.apply, params, x)
  expected = {
    "DenseGeneral_0": {"kernel": G(0, "in", 1), "bias": G(0, "in", 0)},
    "DenseGeneral_1": {"kernel": G(0, "out", 0), "bias": G(0, "out")},
    "Einsum_0": {"kernel": G(1, "in"), "bias": G(1, "in")},
    "Einsum_1": {"kernel": G(1, "out")},
  }
  assert groups == expected
  _same_step(params, groups, expected, x, lambda p, x: jnp.sum(model.apply({"params": p}, x)))


class DropoutMLP(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.leaky_relu(nn.Dense(16)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(3)(x)


@pytest.mark.slow
def test_dropout_in_training_mode_and_leaky_relu():
  model = DropoutMLP()
  x = jnp.ones((4, 5))
  params = _init(model, x, train=False)
  rngs = {"dropout": jax.random.key(1)}
  groups = pp.discover_groups(model.apply, params, x, train=True, rngs=rngs)
  expected = {
    "Dense_0": {"kernel": G(0, "in"), "bias": G(0, "in")},
    "Dense_1": {"kernel": G(0, "out"), "bias": G(0, "out")},
  }
  assert groups == expected
  loss = lambda p, x: jnp.sum(model.apply({"params": p}, x, train=True, rngs=rngs))  # noqa: E731
  _same_step(params, groups, expected, x, loss)


def test_nnx_attention_heads():
  model = nnx.MultiHeadAttention(2, 8, qkv_features=8, decode=False, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  x = jnp.ones((2, 3, 8))
  groups = pp.discover_groups(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
  rules = pp.group_spec_from_paths(state, pp.attention_head_rules("", 0))
  assert groups == rules


class TrunkAndResidualFFN(nn.Module):
  """An MLP trunk of two chained groups, then a residual block whose FFN neurons are a group."""

  @nn.compact
  def __call__(self, x):
    for features in (16, 8, 16):
      x = nn.relu(nn.Dense(features)(x))
    h = nn.Dense(8)(x)
    neurons = nn.relu(nn.Dense(16)(h))
    h = h + nn.Dense(8)(neurons)
    return nn.Dense(3)(h)


@pytest.mark.slow
def test_discovered_chains_balance_the_trunk_and_not_the_residual_block():
  model = TrunkAndResidualFFN()
  x = jax.random.normal(jax.random.key(1), (4, 5))
  params = _init(model, x)
  params["Dense_1"] = {**params["Dense_1"], "kernel": 5.0 * params["Dense_1"]["kernel"]}
  report = pp.explain_groups(model.apply, params, x)
  assert report.chains == ((0, 1), (2,)) and report.balance == ((0, 1),)
  assert report.groups["Dense_4"]["kernel"] == G(2, "in")

  apply = jax.jit(model.apply)
  out = apply({"params": params}, x)
  chained = jax.jit(lambda p: pp.balance(p, report.groups, chains=report.balance))(params)
  np.testing.assert_allclose(apply({"params": chained}, x), out, rtol=1e-5, atol=1e-5)
  per_group = jax.jit(lambda p: pp.path_norm(p, report.groups).per_group)
  before, after = (per_group(p) for p in (params, chained))
  np.testing.assert_allclose(after[0], after[1], rtol=1e-5)
  assert not np.isclose(before[0], before[1], rtol=1e-2) and before[2] == after[2]
  across_the_add = ((0, 1, 2),)  # the chain across the residual add
  whole = jax.jit(lambda p: pp.balance(p, report.groups, chains=across_the_add))(params)
  assert not np.allclose(apply({"params": whole}, x), out, atol=1e-3)

  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(params)
  steps = {}
  for balance in (report.balance, report.chains, False):
    tx = pp.pathprox_sgd(0.1, 1e-2, report.groups, momentum=0.9, balance=balance)
    step = jax.jit(lambda p, g, tx=tx: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))
    steps[balance] = step(params, grads)
  jax.tree.map(np.testing.assert_array_equal, steps[report.balance], steps[report.chains])
  for layer in ("Dense_4", "Dense_5"):  # group 2 is not balanced
    jax.tree.map(np.testing.assert_array_equal, steps[report.balance][layer], steps[False][layer])
  assert not np.allclose(
    steps[report.balance]["Dense_1"]["kernel"], steps[False]["Dense_1"]["kernel"]
  )


# Refusals, each with its reason in the report.


class Refused(nn.Module):
  kind: str

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(16)(x)
    if self.kind == "gelu":
      return nn.Dense(3)(nn.gelu(h))
    if self.kind == "skip":
      return nn.Dense(5)(nn.relu(h)) + h[:, :5]
    if self.kind == "layernorm":
      return nn.Dense(3)(nn.LayerNorm()(nn.relu(h)))
    return nn.Dense(3)(nn.relu(h)), h  # "output": the units are also an output


@pytest.mark.parametrize(
  "kind, reason",
  [
    ("gelu", "a non-homogeneous activation (GELU"),
    ("skip", "a second reader"),
    ("layernorm", "a normalisation over the units"),
    ("output", "are also an output of the function"),
  ],
)
def test_refusals(kind, reason):
  model = Refused(kind)
  x = jnp.ones((4, 5))
  params = _init(model, x)
  report = pp.explain_groups(model.apply, params, x)
  assert not jax.tree.leaves(report.groups)
  first = str(report).splitlines()[0]
  assert first.startswith("Dense_0/kernel (5, 16): no group: its outputs") and reason in first
  with pytest.raises(ValueError, match="found no PathProx unit group"):
    pp.discover_groups(model.apply, params, x)
