"""pp.unit_costs: FLOPs per example of one unit of each group, against counts by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pathprox_jax as pp
from experiments import models


def costs_of(model, x, group_spec=pp.group_spec):
  boxed = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  return pp.unit_costs(
    lambda p, x: model.apply({"params": p}, x), nn.meta.unbox(boxed), x, groups=group_spec(boxed)
  )


def test_mlp_neuron_costs_its_column_and_its_row():
  model = models.MLP(features=(12, 8, 6, 3), relu=(True, False, True, False))
  # group 0: 12 neurons (5x12 in, 12x8 out); group 1: 6 neurons (8x6 in, 6x3 out)
  assert costs_of(model, jnp.zeros((4, 5))) == {0: 2 * 5 + 2 * 8, 1: 2 * 8 + 2 * 3}


def test_vgg_channel_costs_its_convolutions_at_their_resolution():
  model = models.VGG(channels=(4, 6, 8, 8), pool_after=(1,), num_classes=3)
  costs = costs_of(model, jnp.zeros((2, 8, 8, 3)))
  # group 0: conv 3->4 in, conv 4->6 out, at 8x8; group 1: conv 6->8 in, 8->8 out, at 4x4.
  assert costs == {
    0: 2 * 64 * 9 * 3 + 2 * 64 * 9 * 6,
    1: 2 * 16 * 9 * 6 + 2 * 16 * 9 * 8,
  }


def test_vit_head_costs_its_projections_and_attention():
  model = models.ViT(num_heads=(2, 3), mlp_dim=(16, 8), width=8, head_dim=4)
  costs = costs_of(model, jnp.zeros((2, 14, 14, 1)), model.group_spec)
  tokens, width, head_dim = 4 + 1, 8, 4  # 2x2 patches of 7x7, and the class token
  head = 4 * 2 * tokens * width * head_dim + 2 * 2 * tokens * tokens * head_dim
  neuron = 2 * 2 * tokens * width
  assert costs == {0: head, 1: neuron, 2: head, 3: neuron}


def test_relative_costs_make_the_cheapest_one():
  assert pp.relative_costs({0: 4.0, 1: 10.0}) == {0: 1.0, 1: 2.5}
  with pytest.raises(ValueError, match="unit_costs must be finite and > 0"):
    pp.relative_costs({0: 0.0})


def test_units_in_no_product_are_refused():
  G = pp.GroupSpec
  params = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
  with pytest.raises(ValueError, match="group 0 take part in no product"):
    pp.unit_costs(
      lambda p, x: x, params, jnp.ones((5, 3)), groups={"w": G(0, "in"), "v": G(0, "out")}
    )


G = pp.GroupSpec
TWO_GROUPS = {
  "w0": G(0, "in"),
  "v0": G(0, "out"),
  "w1": G(1, "in"),
  "v1": G(1, "out"),
}


def two_groups_params():
  """Two groups of 3 units; unit i's "out" row has norm 0.1 * (i + 1), its "in" column norm 1."""
  v = jnp.array([[0.1], [0.2], [0.3]])
  return {"w0": jnp.eye(3), "v0": v, "w1": jnp.eye(3), "v1": v}


@pytest.mark.slow
def test_costs_scale_each_groups_threshold():
  params = two_groups_params()
  # tau = lr * wd = 0.15: group 0 at 0.15 (keeps units 1, 2), group 1 (costs 3x) at 0.45 (none)
  tx = pp.pathprox(1.0, 0.15, TWO_GROUPS, balance=False, unit_costs={0: 2.0, 1: 6.0})
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = jax.tree.map(lambda p, u: p + u, params, updates)
  np.testing.assert_allclose(new["v0"][:, 0], [0.0, 0.05, 0.15], atol=1e-7)
  np.testing.assert_array_equal(new["v1"], 0.0)
  # The same as the uniform threshold when the costs are equal.
  tx = pp.pathprox(1.0, 0.15, TWO_GROUPS, balance=False, unit_costs={0: 5.0, 1: 5.0})
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(params["v1"][:, 0] + updates["v1"][:, 0], [0.0, 0.05, 0.15], atol=1e-7)


def test_costs_must_name_every_group():
  params = two_groups_params()
  with pytest.raises(ValueError, match=r"unit_costs name groups \[0\] but the groups are \[0, 1\]"):
    pp.pathprox_sgd(0.1, 1e-3, TWO_GROUPS, unit_costs={0: 1.0}).init(params)


def test_objective_weights_each_group_by_its_cost():
  params = two_groups_params()  # each group's path norm: 0.6
  plain = pp.weight_decay_objective(1.0, params, TWO_GROUPS, 0.5)
  weighted = pp.weight_decay_objective(1.0, params, TWO_GROUPS, 0.5, unit_costs={0: 2.0, 1: 6.0})
  np.testing.assert_allclose(plain, 1.0 + 0.5 * 1.2, rtol=1e-6)
  np.testing.assert_allclose(weighted, 1.0 + 0.5 * (0.6 + 3 * 0.6), rtol=1e-6)
