"""Group annotations: linen boxes, NNX metadata, and reading them back with group_spec."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import meta
from jax.sharding import PartitionSpec as P

import pathprox_jax as pp

G = pp.GroupSpec
EXPECTED = {
  "Dense_0": {"kernel": G(0, "in"), "bias": G(0, "in")},
  "Dense_1": {"kernel": G(0, "out"), "bias": G(0, "out")},
  "Dense_2": {"kernel": None, "bias": None},
}


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(5, **pp.group_inits(0, "in"))(x))
    x = nn.relu(nn.Dense(4, **pp.group_inits(0, "out"))(x))
    return nn.Dense(2)(x)


INITS = {
  "init": lambda model, *args: model.init(*args),
  "jit-init": lambda model, *args: jax.jit(model.init)(*args),
  "eval_shape": lambda model, *args: jax.eval_shape(model.init, *args),
}


@pytest.mark.parametrize("init", INITS.values(), ids=INITS.keys())
def test_group_spec_reads_linen_params(init):
  boxed = init(MLP(), jax.random.key(0), jnp.ones((1, 3)))["params"]
  groups = pp.group_spec(boxed)
  assert groups == EXPECTED
  # The spec maps over the unboxed params, params first.
  params = meta.unbox(boxed)
  shapes = jax.tree.map(lambda p, g: (p.shape, g), params, groups)
  assert shapes["Dense_1"]["kernel"] == ((5, 4), G(0, "out"))
  assert shapes["Dense_2"]["bias"] == ((2,), None)


def test_with_group_keeps_the_wrapped_initializer():
  init = nn.initializers.normal(2.0)
  boxed = pp.with_group(init, 3, "out")(jax.random.key(0), (4, 2))
  assert isinstance(boxed, pp.PathProxGroup) and boxed.spec == G(3, "out")
  np.testing.assert_array_equal(meta.unbox(boxed), init(jax.random.key(0), (4, 2)))
  inits = pp.group_inits(1, "in", kernel_init=init)
  assert inits["bias_init"](jax.random.key(0), (3,)).spec == G(1, "in")
  np.testing.assert_array_equal(
    meta.unbox(inits["kernel_init"](jax.random.key(0), (4, 2))), init(jax.random.key(0), (4, 2))
  )


@pytest.mark.parametrize(
  "group_outside", [False, True], ids=["partitioning-outside", "group-outside"]
)
def test_group_spec_with_partitioning_in_either_order(group_outside):
  lecun = nn.initializers.lecun_normal()
  if group_outside:
    kernel_init = pp.with_group(nn.with_partitioning(lecun, (None, "d")), 0, "in")
  else:
    kernel_init = nn.with_partitioning(pp.with_group(lecun, 0, "in"), (None, "d"))
  model = nn.Dense(
    8, kernel_init=kernel_init, bias_init=pp.with_group(nn.initializers.zeros, 0, "in")
  )
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 3)))["params"]
  assert pp.group_spec(boxed) == {"kernel": G(0, "in"), "bias": G(0, "in")}
  assert nn.get_partition_spec(boxed) == {"kernel": P(None, "d"), "bias": P()}
  unboxed = meta.unbox(boxed)
  assert unboxed["kernel"].shape == (3, 8) and unboxed["bias"].shape == (8,)


def test_group_spec_reads_nnx_state():
  class Model(nnx.Module):
    def __init__(self, rngs):
      meta_in, meta_out = pp.group_metadata(0, "in"), pp.group_metadata(0, "out")
      self.Dense_0 = nnx.Linear(3, 5, kernel_metadata=meta_in, bias_metadata=meta_in, rngs=rngs)
      self.Dense_1 = nnx.Linear(5, 4, kernel_metadata=meta_out, bias_metadata=meta_out, rngs=rngs)
      self.Dense_2 = nnx.Linear(4, 2, rngs=rngs)
      self.scale = nnx.Param(jnp.ones(()))
      self.count = nnx.BatchStat(jnp.zeros(()))  # not a Param: not in the state read below

  assert pp.group_metadata(1, "out") == {"pathprox": G(1, "out")}
  state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
  assert nnx.to_pure_dict(pp.group_spec(state)) == {**EXPECTED, "scale": None}


def test_group_spec_is_a_frozen_pytree_leaf():
  spec = G(2, "out")
  assert jax.tree.leaves(spec) == [spec]
  assert jax.tree.leaves({"a": spec, "b": None}) == [spec]
  assert jax.tree.map(lambda p, g: g, {"a": jnp.ones(2)}, {"a": spec}) == {"a": spec}
  assert hash(spec) == hash(G(2, "out"))
  with pytest.raises(AttributeError):
    spec.group = 1
