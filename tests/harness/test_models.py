"""Tests for experiments.models: shapes, group annotations, init, linen/NNX agreement."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import meta

import pathprox_jax as pp
from configs import cifar_vgg, mnist_subset_mlp
from experiments import models

G = pp.GroupSpec
MLP_CONFIG = mnist_subset_mlp.get_config()
VGG_CONFIG = cifar_vgg.get_config()


def _init(model, x):
  return jax.jit(model.init)(jax.random.key(0), x)["params"]


def test_paper_mlp_shapes_and_groups():
  model = models.MLP(MLP_CONFIG.features, MLP_CONFIG.relu)
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  shapes = jax.tree.map(lambda x: x.shape, meta.unbox(boxed))
  fan_ins = (784, 400, 400, 400, 400, 400)
  assert shapes == {
    f"Dense_{i}": {"kernel": (fan_in, width), "bias": (width,)}
    for i, (fan_in, width) in enumerate(zip(fan_ins, MLP_CONFIG.features, strict=True))
  }
  roles = ("in", "out")
  assert pp.group_spec(boxed) == {
    f"Dense_{i}": {"kernel": G(i // 2, roles[i % 2]), "bias": G(i // 2, roles[i % 2])}
    for i in range(6)
  }


@pytest.mark.slow
def test_mlp_unpaired_last_layer_is_ungrouped():
  boxed = _init(models.MLP((5, 5, 3), (True, False, False)), jnp.ones((2, 4)))
  groups = pp.group_spec(boxed)
  assert groups["Dense_2"] == {"kernel": None, "bias": None}
  assert list(pp.path_norm(meta.unbox(boxed), groups).per_group) == [0]


@pytest.mark.parametrize("relu", [(True, False, True, False), (True, True, True, False)])
def test_mlp_applies_relu_where_flagged(relu):
  model = models.MLP((6, 5, 4, 3), relu)
  x = jax.random.normal(jax.random.key(1), (3, 2, 2, 2))
  params = meta.unbox(_init(model, x))
  h = np.asarray(x).reshape(3, -1)
  for i, flag in enumerate(relu):
    layer = params[f"Dense_{i}"]
    h = h @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
    h = np.maximum(h, 0) if flag else h
  np.testing.assert_allclose(model.apply({"params": params}, x), h, rtol=1e-5, atol=1e-6)


def test_folding_the_paper_mlp_halves_its_bottlenecks_and_keeps_its_function():
  model = models.MLP(MLP_CONFIG.features, MLP_CONFIG.relu)
  x = jax.random.normal(jax.random.key(1), (32, 28, 28, 1))
  params = meta.unbox(_init(model, x))
  folded, folded_params = models.fold_linear_layers(model, params)
  assert (folded.features, folded.relu) == ((400, 400, 400, 10), (True, True, True, False))
  kernel = folded_params["Dense_1"]["kernel"]
  np.testing.assert_allclose(
    kernel, params["Dense_1"]["kernel"] @ params["Dense_2"]["kernel"], rtol=1e-6
  )
  expected = model.apply({"params": params}, x)
  np.testing.assert_allclose(
    folded.apply({"params": folded_params}, x), expected, rtol=1e-5, atol=1e-6
  )
  # Stacked members (a sweep's vmapped evaluation) fold one by one.
  stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
  folded_stacked = jax.vmap(lambda p: models.fold_linear_layers(model, p)[1])(stacked)
  np.testing.assert_allclose(folded_stacked["Dense_1"]["kernel"][0], kernel, rtol=1e-6)


@pytest.mark.slow
def test_a_bottleneck_cheaper_as_two_layers_stays_two_layers():
  # 784 -> 10 -> 784: two thin products beat one 784 x 784; the 10 -> 784 -> 400 chain folds.
  model = models.MLP((10, 784, 400, 10), (False, False, True, False))
  x = jax.random.normal(jax.random.key(1), (4, 784))
  params = meta.unbox(_init(model, x))
  folded, folded_params = models.fold_linear_layers(model, params)
  assert (folded.features, folded.relu) == ((10, 400, 10), (False, True, False))
  np.testing.assert_allclose(
    folded.apply({"params": folded_params}, x),
    model.apply({"params": params}, x),
    rtol=1e-4,
    atol=1e-5,
  )


def test_mlp_rejects_mismatched_relu_flags():
  with pytest.raises(ValueError, match="one relu flag per layer"):
    _init(models.MLP((4, 3), (True,)), jnp.ones((1, 2)))
  with pytest.raises(ValueError, match="one relu flag per layer"):
    models.NNXMLP(2, (4, 3), (True,), rngs=nnx.Rngs(0))


def test_mlp_pytorch_init_bounds():
  params = meta.unbox(_init(models.MLP((300, 300, 300), (True, True, False)), jnp.ones((1, 784))))
  for name, fan_in in (("Dense_0", 784), ("Dense_1", 300), ("Dense_2", 300)):
    bound = 1 / math.sqrt(fan_in)
    for kind in ("kernel", "bias"):
      values = np.abs(np.asarray(params[name][kind]))
      assert values.max() <= bound
      assert values.max() > 0.95 * bound  # uniform up to the bound, not e.g. zeros
    std = np.asarray(params[name]["kernel"]).std()
    np.testing.assert_allclose(std, bound / math.sqrt(3), rtol=0.03)


@pytest.mark.slow
def test_nnx_mlp_matches_linen():
  features, relu, in_features = (8, 7, 6, 5, 3), (True, False, True, True, False), 12
  x = jax.random.normal(jax.random.key(2), (4, 2, 2, 3))
  linen_model = models.MLP(features, relu)
  boxed = _init(linen_model, x)
  params = meta.unbox(boxed)

  model = models.NNXMLP(in_features, features, relu, rngs=nnx.Rngs(3))
  state = nnx.state(model, nnx.Param)
  assert nnx.to_pure_dict(pp.group_spec(state)) == pp.group_spec(boxed)
  for i, fan_in in enumerate((in_features, *features[:-1])):
    for kind in ("kernel", "bias"):
      assert np.abs(state[f"Dense_{i}"][kind].get_value()).max() <= 1 / math.sqrt(fan_in)

  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  nnx_apply = nnx.jit(lambda m: m(x))
  np.testing.assert_allclose(
    nnx_apply(model), jax.jit(linen_model.apply)({"params": params}, x), atol=1e-6
  )


def test_vgg19_shapes_and_groups():
  model = models.VGG(VGG_CONFIG.channels, VGG_CONFIG.pool_after)
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  params = meta.unbox(boxed)
  channels = VGG_CONFIG.channels
  for i, (c_in, c_out) in enumerate(zip((3, *channels[:-1]), channels, strict=True)):
    assert params[f"Conv_{i}"]["kernel"].shape == (3, 3, c_in, c_out)
  assert params["Dense_0"]["kernel"].shape == (512, 10)
  groups = pp.group_spec(boxed)
  roles = ("in", "out")
  assert groups == {
    **{
      f"Conv_{i}": {"kernel": G(i // 2, roles[i % 2]), "bias": G(i // 2, roles[i % 2])}
      for i in range(16)
    },
    "Dense_0": {"kernel": None, "bias": None},
  }
  per_group = jax.eval_shape(lambda p: pp.path_norm(p, groups).per_group, params)
  assert list(per_group) == list(range(8))


@pytest.mark.slow
def test_vgg_forward_pools_and_init():
  model = models.VGG(channels=(64, 64, 8, 8), pool_after=(1,), num_classes=5)
  x = jax.random.normal(jax.random.key(4), (2, 8, 8, 3))
  params = meta.unbox(_init(model, x))
  # 8x8 -> max-pool 4x4 -> average pool 2x2, so the classifier reads 2 * 2 * 8 features.
  assert params["Dense_0"]["kernel"].shape == (32, 5)
  assert jax.jit(model.apply)({"params": params}, x).shape == (2, 5)
  kernel = np.asarray(params["Conv_1"]["kernel"])
  np.testing.assert_allclose(kernel.std(), math.sqrt(2 / (9 * 64)), rtol=0.03)
  assert abs(kernel.mean()) < 0.05 * kernel.std()
  assert all(not np.any(params[f"Conv_{i}"]["bias"]) for i in range(4))


@pytest.mark.slow
def test_vgg_classifier_is_kaiming_normal_with_zero_bias_like_the_paper():
  model = models.VGG(channels=(8, 8), pool_after=(), num_classes=200)
  params = meta.unbox(_init(model, jnp.ones((1, 8, 8, 3))))
  kernel = np.asarray(params["Dense_0"]["kernel"])
  assert kernel.shape == (128, 200)  # 4 * 4 * 8 features after the average pool
  np.testing.assert_allclose(kernel.std(), math.sqrt(2 / 128), rtol=0.03)  # PyTorch's: 0.051
  assert abs(kernel.mean()) < 0.05 * kernel.std()
  # Normal, not uniform: some draws lie beyond 3 std (a uniform stays within √3 std).
  assert np.abs(kernel).max() > 3 * kernel.std()
  assert not np.any(params["Dense_0"]["bias"])


def test_vgg_rejects_odd_number_of_convs():
  with pytest.raises(ValueError, match="even number of convs"):
    _init(models.VGG(channels=(4, 4, 4), pool_after=()), jnp.ones((1, 8, 8, 3)))


def test_compacted_widths_rejects_foreign_kept():
  kept = {1: pp.KeptUnits(np.array([0]), 5)}
  with pytest.raises(ValueError, match="another model"):
    models.compacted_widths((4, 4, 4, 3), kept)
  with pytest.raises(ValueError, match="another model"):
    models.compacted_widths((4, 3), kept)
