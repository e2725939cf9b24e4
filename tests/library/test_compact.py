"""Tests for pathprox_jax.compact: dropping switched-off units keeps the function."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import meta

import pathprox_jax as pp
from experiments import models

G = pp.GroupSpec


def _init(model, x):
  boxed = jax.jit(model.init)(jax.random.key(0), x)["params"]
  return meta.unbox(boxed), pp.group_spec(boxed)


def _zero_out_rows(params, layer, rows):
  """Sets units ``rows`` of an "out" kernel (axis -2) to zero."""
  kernel = params[layer]["kernel"]
  return {**params, layer: {**params[layer], "kernel": kernel.at[..., rows, :].set(0.0)}}


def _assert_compacts_exactly(model, widths, rebuild, params, groups, x, expected_kept):
  """Compacts ``params`` and checks kept units, tree, dtypes, groups and outputs."""
  smaller, kept = pp.compact(params, groups)
  assert {g: k.indices.tolist() for g, k in kept.items()} == expected_kept
  assert jax.tree.structure(smaller) == jax.tree.structure(params)
  assert jax.tree.map(lambda p: p.dtype, smaller) == jax.tree.map(lambda p: p.dtype, params)
  small_model = rebuild(models.compacted_widths(widths, kept))
  small_boxed = jax.eval_shape(small_model.init, jax.random.key(0), x)["params"]
  assert jax.tree.map(lambda p: p.shape, meta.unbox(small_boxed)) == jax.tree.map(
    lambda p: p.shape, smaller
  )
  assert pp.group_spec(small_boxed) == groups
  np.testing.assert_allclose(
    small_model.apply({"params": smaller}, x), model.apply({"params": params}, x), atol=1e-5
  )
  return smaller, kept


@pytest.mark.slow
def test_compact_mlp_drops_exactly_the_zero_output_units():
  features, relu = (6, 5, 7, 4, 3), (True, False, True, True, False)
  model = models.MLP(features, relu)
  x = jax.random.normal(jax.random.key(1), (8, 2, 2, 1))
  params, groups = _init(model, x)
  params = _zero_out_rows(params, "Dense_1", [1, 4])
  params = _zero_out_rows(params, "Dense_3", [0, 6])
  # Unit 2 of group 0 has no input weights but still adds relu(0.5) * v_2: it must stay.
  params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].at[:, 2].set(0.0)
  params["Dense_0"]["bias"] = params["Dense_0"]["bias"].at[2].set(0.5)
  smaller, kept = _assert_compacts_exactly(
    model,
    features,
    lambda f: models.MLP(f, relu),
    params,
    groups,
    x,
    {0: [0, 2, 3, 5], 1: [1, 2, 3, 4, 5]},
  )
  assert [(k.width, k.original_width) for k in kept.values()] == [(4, 6), (5, 7)]
  np.testing.assert_array_equal(
    smaller["Dense_0"]["bias"], params["Dense_0"]["bias"][np.array([0, 2, 3, 5])]
  )
  np.testing.assert_array_equal(smaller["Dense_1"]["bias"], params["Dense_1"]["bias"])
  np.testing.assert_array_equal(smaller["Dense_4"]["kernel"], params["Dense_4"]["kernel"])


@pytest.mark.slow  # about 12 s of CPU compiling the VGGs (the MLP tests cover compact quickly)
def test_compact_vgg_drops_zero_output_channels():
  channels, pool_after = (4, 6, 5, 3), (1,)
  model = models.VGG(channels, pool_after, num_classes=3)
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
  params, groups = _init(model, x)
  params = _zero_out_rows(params, "Conv_1", [0, 3])
  params = _zero_out_rows(params, "Conv_3", [2])
  _assert_compacts_exactly(
    model,
    channels,
    lambda c: models.VGG(c, pool_after, num_classes=3),
    params,
    groups,
    x,
    {0: [1, 2], 1: [0, 1, 3, 4]},
  )


def test_compact_keeps_everything_without_exact_zeros():
  params, groups = _init(models.MLP((5, 4, 3), (True, False, False)), jnp.ones((1, 3)))
  smaller, kept = pp.compact(params, groups)
  assert kept[0].indices.tolist() == list(range(5))
  jax.tree.map(np.testing.assert_array_equal, smaller, params)


@pytest.mark.slow
def test_compact_atol_drops_small_units_within_the_bound():
  w = jnp.array([[1.0, -2.0, 0.5, 1.5]])
  a = jnp.array([0.1, 0.2, 0.3, 0.4])
  v = jnp.array([[0.0, 0.0], [1e-4, -5e-4], [-2e-3, 1e-3], [1.0, 0.5]])
  params = {"in": {"kernel": w, "bias": a}, "out": {"kernel": v, "bias": jnp.ones(2)}}
  groups = {
    "in": {"kernel": G(0, "in"), "bias": G(0, "in")},
    "out": {"kernel": G(0, "out"), "bias": G(0, "out")},
  }

  def apply(p, x):
    return jax.nn.relu(x @ p["in"]["kernel"] + p["in"]["bias"]) @ p["out"]["kernel"] + 1.0

  atol = 1e-3
  assert pp.compact(params, groups)[1][0].indices.tolist() == [1, 2, 3]
  smaller, kept = pp.compact(params, groups, atol=atol)
  assert kept[0].indices.tolist() == [2, 3]
  x = jnp.array([[-1.0], [-0.5]])
  h = jax.nn.relu(x @ w + a)
  bound = atol * np.sqrt(2) * np.abs(h[:, :2]).sum(axis=1)
  change = np.linalg.norm(apply(smaller, x) - apply(params, x), axis=1)
  assert np.all(change > 0)
  assert np.all(change <= bound)


@pytest.mark.slow
def test_compact_nnx_state():
  features, relu = (5, 4, 3), (True, False, False)
  model = models.NNXMLP(6, features, relu, rngs=nnx.Rngs(0))
  model.Dense_1.kernel.set_value(model.Dense_1.kernel.get_value().at[3].set(0.0))
  state = nnx.state(model, nnx.Param)
  smaller, kept = pp.compact(state, pp.group_spec(state))
  small_model = models.NNXMLP(6, models.compacted_widths(features, kept), relu, rngs=nnx.Rngs(1))
  nnx.update(small_model, smaller)
  x = jax.random.normal(jax.random.key(3), (4, 6))
  np.testing.assert_allclose(small_model(x), model(x), atol=1e-6)
  assert kept[0].indices.tolist() == [0, 1, 2, 4]


def test_compact_is_eager_only():
  params, groups = _init(models.MLP((4, 3), (True, False)), jnp.ones((1, 2)))
  with pytest.raises(jax.errors.TracerArrayConversionError):
    jax.jit(lambda p: pp.compact(p, groups)[0])(params)


@pytest.mark.slow  # trains 300 steps
def test_compact_after_pathprox_training_keeps_outputs():
  features, relu = (16, 16, 16, 3), (True, False, True, False)
  model = models.MLP(features, relu)
  kx, kt = jax.random.split(jax.random.key(4))
  x = jax.random.normal(kx, (128, 8))
  y = jnp.argmax(x @ jax.random.normal(kt, (8, 3)), axis=-1)
  params, groups = _init(model, x)
  tx = pp.pathprox_sgd(0.1, 0.01, groups, momentum=0.9)  # τ = λγ/(1-β) = 0.01

  def loss(p):
    logits = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train(p):
    def step(carry, _):
      p, state = carry
      updates, state = tx.update(jax.grad(loss)(p), state, p)
      return (optax.apply_updates(p, updates), state), None

    return jax.lax.scan(step, (p, tx.init(p)), None, length=300)[0][0]

  params = train(params)
  smaller, kept = pp.compact(params, groups)
  active = jax.jit(lambda p: pp.active_units(p, groups).per_group)(params)
  for g in (0, 1):
    assert 0 < kept[g].width < 16
    # PathProx normalises every w_i, so its switched-off units are exactly those with v_i = 0.
    assert kept[g].width == int(active[g])
  small_model = models.MLP(models.compacted_widths(features, kept), relu)
  np.testing.assert_allclose(
    small_model.apply({"params": smaller}, x), model.apply({"params": params}, x), atol=1e-5
  )
