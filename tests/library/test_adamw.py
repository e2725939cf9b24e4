"""PathProx-AdamW without groups is optax's AdamW with the kernel-rule decay mask."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import pathprox_jax as pp


@pytest.mark.parametrize("nesterov", [False, True], ids=["adamw", "nadamw"])
def test_without_groups_equals_optax_adamw_with_kernel_mask(nesterov):
  keys = jax.random.split(jax.random.key(0), 4)
  params = {
    "dense": {
      "kernel": jax.random.normal(keys[0], (5, 4)),
      "bias": jax.random.normal(keys[1], (4,)),
    },
    "attention": {"kernel": jax.random.normal(keys[2], (4, 2, 3)), "bias": jnp.ones((2, 3))},
    "scale": jax.random.normal(keys[3], (4,)),
  }
  no_groups = jax.tree.map(lambda _: None, params)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 6)
  options = dict(b1=0.8, b2=0.95, eps=1e-6, nesterov=nesterov)
  tx = pp.pathprox_adamw(schedule, 0.3, no_groups, **options)
  base = optax.adamw(schedule, weight_decay=0.3, mask=pp.kernel_mask, **options)

  def run(tx):
    def step(carry, t):
      params, state = carry
      grads = jax.tree.map(lambda p: jnp.cos(3.0 * p + t), params)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), jnp.arange(5.0))[0][0])(params)

  got, expected = run(tx), run(base)
  chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-7)
  assert not jnp.allclose(got["dense"]["kernel"], params["dense"]["kernel"])
