"""Discovered groups carry their balance chains: the default ``balance=True`` keeps the function."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pathprox_jax as pp

G = pp.GroupSpec


class TrunkAndResidual(nn.Module):
  """An MLP trunk (groups 0, 1) feeding a residual block with ReLU neurons (group 2: Dense_5
  "in", Dense_4 "out")."""

  @nn.compact
  def __call__(self, x):
    for features in (16, 8, 16):
      x = nn.relu(nn.Dense(features)(x))
    h = nn.Dense(8)(x)
    h = h + nn.Dense(8)(nn.relu(nn.Dense(16)(h)))
    return nn.Dense(3)(h)


@pytest.fixture(scope="module")
def residual():
  """The model, its input, discovered groups, and params with unit-norm "in" weights (so that a
  zero step's normalisation is the identity) and unequal path norms (so the balance moves)."""
  model = TrunkAndResidual()
  x = jax.random.normal(jax.random.key(1), (4, 5))
  params = model.init(jax.random.key(0), x)["params"]
  groups = pp.discover_groups(model.apply, params, x)
  params = pp.prox(params, groups, 0.0, balance=False)
  params["Dense_4"] = {**params["Dense_4"], "kernel": 5.0 * params["Dense_4"]["kernel"]}
  return model, x, groups, params


@pytest.mark.slow
def test_discovered_spec_carries_the_chains(residual):
  model, x, groups, params = residual
  report = pp.explain_groups(model.apply, params, x)
  assert report.chains == ((0, 1), (2,))
  assert groups["Dense_0"]["kernel"] == G(0, "in") and groups["Dense_0"]["kernel"].chain == 0
  assert groups["Dense_3"]["bias"].chain == 0  # group 1's "out" layer: chain 0
  assert groups["Dense_5"]["kernel"].chain == groups["Dense_4"]["bias"].chain == 1
  assert repr(groups["Dense_4"]["kernel"]) == "GroupSpec(group=2, role='out', chain=1)"


@pytest.mark.slow
def test_default_balance_keeps_the_function(residual):
  model, x, groups, params = residual
  apply = jax.jit(model.apply)
  out = apply({"params": params}, x)
  balanced = pp.balance(params, groups)
  np.testing.assert_allclose(apply({"params": balanced}, x), out, rtol=1e-5, atol=1e-5)
  norms = pp.path_norm(balanced, groups).per_group
  np.testing.assert_allclose(norms[0], norms[1], rtol=1e-5)  # the trunk is balanced
  assert norms[2] == pp.path_norm(params, groups).per_group[2]  # the residual group is not


@pytest.mark.slow
def test_zero_step_with_default_balance_keeps_the_function(residual):
  model, x, groups, params = residual
  tx = pp.pathprox_sgd(0.1, 0.0, groups)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  stepped = optax.apply_updates(params, updates)
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(
    apply({"params": stepped}, x), apply({"params": params}, x), rtol=1e-5, atol=1e-5
  )
  assert not np.allclose(stepped["Dense_3"]["kernel"], params["Dense_3"]["kernel"])  # balanced


def test_annotated_spec_keeps_one_chain_of_all_groups(residual):
  """The same groups without chains (as annotations give them): True is one chain of all."""
  model, x, groups, params = residual
  bare = jax.tree.map(lambda s: G(s.group, s.role, s.unit_axis), groups)
  assert bare == groups and all(s.chain is None for s in jax.tree.leaves(bare))
  whole = pp.balance(params, bare)
  norms = pp.path_norm(whole, bare).per_group
  np.testing.assert_allclose([norms[0], norms[1]], [norms[2], norms[2]], rtol=1e-5)
  out = model.apply({"params": params}, x)
  assert not np.allclose(model.apply({"params": whole}, x), out, atol=1e-3)


def test_explicit_balance_overrides_the_carried_chains(residual):
  _, _, groups, params = residual
  jax.tree.map(np.testing.assert_array_equal, pp.balance(params, groups, chains=False), params)
  one = pp.balance(params, groups, chains=((0, 1, 2),))
  norms = pp.path_norm(one, groups).per_group
  np.testing.assert_allclose([norms[0], norms[1]], [norms[2], norms[2]], rtol=1e-5)


def test_mixed_and_inconsistent_chains_are_refused(residual):
  _, _, groups, params = residual
  mixed = jax.tree.map(lambda s: G(s.group, s.role, s.unit_axis) if s.group == 2 else s, groups)
  with pytest.raises(ValueError, match=r"groups \[0, 1\] carry balance chains .* groups \[2\] do"):
    pp.balance(params, mixed)
  pp.balance(params, mixed, chains=((0, 1),))  # explicit chains need no carried ones
  split = {**groups, "Dense_1": {**groups["Dense_1"], "bias": G(0, "out", chain=3)}}
  with pytest.raises(ValueError, match="group 0's parameters carry different balance chains"):
    pp.balance(params, split)
  with pytest.raises(ValueError, match="chain must be an int >= 0 or None, got -1"):
    G(0, "in", chain=-1)


@pytest.mark.slow
def test_compact_keeps_the_chains(residual):
  _, _, groups, params = residual
  dead = params["Dense_1"]["kernel"].at[0].set(0.0)
  smaller, kept = pp.compact({**params, "Dense_1": {**params["Dense_1"], "kernel": dead}}, groups)
  assert kept[0].width == 15
  balanced = pp.balance(smaller, groups)
  assert pp.path_norm(balanced, groups).per_group[2] == pp.path_norm(smaller, groups).per_group[2]
