"""pp.unit_costs: FLOPs per example of one unit of each group, against counts by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
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
