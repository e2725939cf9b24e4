"""Discovery of BatchNorm channels as units in unannotated linen models.

Channel ``i`` of conv → BatchNorm → ReLU → conv is a unit whose "in" side is the BatchNorm's
(γ_i, β_i), the layer before it "follows" and the next layer's input channel is "out", in
training mode (batch statistics) and with running averages: the discovered spec is the
annotated twin's (:func:`pathprox_jax.batch_norm_inits`), and so is a PathProx step. A BatchNorm
whose channels are added to a skip, or go through tanh, or a LayerNorm over the channels, is no
unit, and the report says why.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pathprox_jax as pp

X = jax.random.normal(jax.random.key(1), (4, 6, 6, 3))


class CNN(nn.Module):
  """conv-BN-relu-conv-BN-relu-pool-dense, annotated (the twin) or not."""

  train: bool
  annotated: bool = False

  @nn.compact
  def __call__(self, x):
    notes = self.annotated
    bn = dict(use_running_average=not self.train)
    x = nn.Conv(5, (3, 3), name="c0", **(pp.group_inits(0, "follow") if notes else {}))(x)
    x = nn.BatchNorm(name="bn0", **bn, **(pp.batch_norm_inits(0) if notes else {}))(x)
    x = nn.Conv(4, (3, 3), name="c1", **(pp.group_inits(0, "out") if notes else {}))(nn.relu(x))
    x = nn.relu(nn.BatchNorm(name="bn1", **bn)(x))
    return nn.Dense(2, name="head")(jnp.mean(x, axis=(1, 2)))


class MLP(nn.Module):
  """dense → BN → relu → dense, annotated (the twin) or not."""

  train: bool
  annotated: bool = False

  @nn.compact
  def __call__(self, x):
    notes = self.annotated
    x = nn.Dense(6, name="d0", **(pp.group_inits(0, "follow") if notes else {}))(x)
    x = nn.BatchNorm(
      use_running_average=not self.train, name="bn0", **(pp.batch_norm_inits(0) if notes else {})
    )(x)
    return nn.Dense(2, name="d1", **(pp.group_inits(0, "out") if notes else {}))(nn.relu(x))


def _apply(model, variables):
  """The model as a function of its params, the batch statistics fixed (mutable in training)."""
  stats = variables["batch_stats"]

  def fn(p, x):
    if model.train:
      return model.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])[0]
    return model.apply({"params": p, "batch_stats": stats}, x)

  return fn


def _no_chain(groups):
  return jax.tree.map(lambda s: dataclasses.replace(s, chain=None), groups)


@pytest.mark.slow
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("family, x", [(CNN, X), (MLP, X[:, 0, 0])])
def test_discovered_like_annotated(family, x, train):
  twin = family(train, annotated=True)
  boxed = jax.jit(twin.init)(jax.random.key(0), x)
  expected = pp.group_spec(boxed["params"])
  variables = nn.meta.unbox(boxed)
  params = variables["params"]
  model = family(train)
  fn = _apply(model, variables)
  groups = pp.discover_groups(fn, params, x)
  assert _no_chain(groups) == expected
  report = str(pp.explain_groups(fn, params, x))
  assert "bn0's scale and bias" in report

  def loss(p):
    return jnp.sum(fn(p, x) ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  steps = []
  for spec in (groups, expected):
    tx = pp.pathprox_sgd(0.1, 0.05, spec)
    step = jax.jit(lambda p, g, tx=tx: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))
    steps.append(step(params, grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), *steps)
  scale = steps[0]["bn0"]["scale"]
  np.testing.assert_allclose(np.abs(scale), 1.0, rtol=1e-5)  # the prox normalised γ


class Residual(nn.Module):
  """A basic block: conv-BN-relu-conv-BN + skip, relu (convs without bias); a dense head."""

  train: bool

  @nn.compact
  def __call__(self, x):
    bn = dict(use_running_average=not self.train)
    h = nn.Conv(4, (3, 3), use_bias=False, name="conv1")(x)
    h = nn.relu(nn.BatchNorm(name="bn1", **bn)(h))
    h = nn.BatchNorm(name="bn2", **bn)(nn.Conv(3, (3, 3), use_bias=False, name="conv2")(h))
    h = nn.relu(h + x)
    return nn.Dense(2, name="head")(jnp.mean(h, axis=(1, 2)))


@pytest.mark.slow
@pytest.mark.parametrize("train", [True, False])
def test_residual_block_output_is_no_unit(train):
  model = Residual(train)
  variables = jax.jit(model.init)(jax.random.key(0), X)
  fn = _apply(model, variables)
  report = pp.explain_groups(fn, variables["params"], X)
  groups = report.groups
  assert groups["bn1"]["scale"] == pp.GroupSpec(0, "in", chain=0)
  assert groups["conv1"]["kernel"].role == "follow"
  assert groups["conv2"]["kernel"].role == "out"
  assert groups["bn2"] == {"scale": None, "bias": None}
  assert "normalised by bn2, then added to another value by add" in str(report)


class Chained(nn.Module):
  """A Dense group (d0 "in", d1 "out"), then a BatchNorm group (d2 follows, bn "in", d3 "out")."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(5, name="d1")(nn.relu(nn.Dense(6, name="d0")(x))))
    x = nn.BatchNorm(use_running_average=True, name="bn")(nn.Dense(4, name="d2")(x))
    return nn.Dense(2, name="d3")(nn.relu(x))


def test_batchnorm_group_starts_a_chain():
  x = X[:, 0, 0]
  model = Chained()
  variables = jax.jit(model.init)(jax.random.key(0), x)
  report = pp.explain_groups(
    lambda p, x: model.apply({**variables, "params": p}, x), variables["params"], x
  )
  roles = {m: report.groups[m]["kernel"].role for m in ("d0", "d1", "d2", "d3")}
  assert roles == {"d0": "in", "d1": "out", "d2": "follow", "d3": "out"}
  assert report.groups["bn"]["scale"] == pp.GroupSpec(1, "in", chain=1)
  assert report.chains == ((0,), (1,))  # the balance would pass a scale that bn normalises away


class Refused(nn.Module):
  """conv → a normalisation → an activation → conv (+ the conv's output, with a skip): no unit."""

  norm: str
  activation: str
  skip: bool = False

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(5, (3, 3), name="c0")(x)
    batch_norm = nn.BatchNorm(use_running_average=self.skip)  # running averages with the skip
    x = nn.LayerNorm()(h) if self.norm == "layer" else batch_norm(h)
    x = nn.Conv(5, (3, 3), name="c1")(getattr(nn, self.activation)(x))
    return x + h if self.skip else x


@pytest.mark.parametrize(
  "norm, activation, reason",
  [
    ("bn", "tanh", "normalised by BatchNorm_0, then go through tanh"),
    ("layer", "relu", "normalised, but the statistics are taken over the units"),
    ("skip", "relu", "normalised, but also read outside the normalisation"),
  ],
)
def test_refused(norm, activation, reason):
  model = Refused(norm, activation, skip=norm == "skip")
  variables = jax.jit(model.init)(jax.random.key(0), X)
  stats = variables.get("batch_stats", {})

  def fn(p, x):
    return model.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])[0]

  report = pp.explain_groups(fn, variables["params"], X)
  assert not jax.tree.leaves(report.groups)
  assert reason in str(report), str(report)
