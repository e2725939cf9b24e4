"""PathProx-AdamW without groups is optax's AdamW with the kernel-rule decay mask."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
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


G = pp.GroupSpec
ADAM = dict(b1=0.8, b2=0.9, eps=1e-3, eps_root=1e-4)


def one_group_with_a_free_leaf():
  """A grouped Dense pair (two weak units to switch off), an ungrouped kernel and biases."""
  rng = np.random.default_rng(0)
  params = {
    "hidden": {"kernel": rng.standard_normal((4, 5)), "bias": 0.1 * rng.standard_normal(5)},
    "output": {"kernel": rng.standard_normal((5, 3)), "bias": 0.1 * rng.standard_normal(3)},
    "free": {"kernel": rng.standard_normal((3, 2)), "bias": 0.1 * rng.standard_normal(2)},
  }
  params["output"]["kernel"][:2] *= 0.05
  params = jax.tree.map(lambda p: p.astype(np.float32), params)
  groups = {
    "hidden": {"kernel": G(0, "in"), "bias": G(0, "in")},
    "output": {"kernel": G(0, "out"), "bias": G(0, "out")},
    "free": {"kernel": None, "bias": None},
  }
  # Per-unit gradient scales differ, so the units' Adam denominators (and thresholds) do.
  unit_scale = np.array([1.0, 0.3, 2.0, 0.5, 1.0])[:, None]
  grads = []
  for seed in (1, 2):
    g = jax.tree.map(
      lambda p, s=seed: np.random.default_rng(s).standard_normal(p.shape).astype(np.float32),
      params,
    )
    g["output"]["kernel"] = (g["output"]["kernel"] * unit_scale).astype(np.float32)
    grads.append(g)
  return params, groups, grads


def reference_preconditioned(params, grads, schedule, wd, b1, b2, eps, eps_root):
  """Float64 NumPy: Adam, AdamW's decay on the free kernel, prox with τ_i = λγ_t / d_i."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  mu = jax.tree.map(np.zeros_like, p)
  nu = jax.tree.map(np.zeros_like, p)
  for t, g in enumerate(grads):
    lr = float(schedule(t))
    nu_hat = {}
    for layer in p:
      for leaf in p[layer]:
        d = np.asarray(g[layer][leaf], np.float64)
        mu[layer][leaf] = b1 * mu[layer][leaf] + (1 - b1) * d
        nu[layer][leaf] = b2 * nu[layer][leaf] + (1 - b2) * d * d
        m_hat = mu[layer][leaf] / (1 - b1 ** (t + 1))
        nu_hat[layer, leaf] = nu[layer][leaf] / (1 - b2 ** (t + 1))
        direction = m_hat / (np.sqrt(nu_hat[layer, leaf] + eps_root) + eps)
        if (layer, leaf) == ("free", "kernel"):
          direction = direction + wd * p[layer][leaf]
        p[layer][leaf] = p[layer][leaf] - lr * direction
    w, a, v = p["hidden"]["kernel"], p["hidden"]["bias"], p["output"]["kernel"]
    for i in range(w.shape[1]):
      norm = max(np.linalg.norm(w[:, i]), 1e-6)
      w[:, i], a[i] = w[:, i] / norm, a[i] / norm
      d_i = np.sqrt(np.mean(nu_hat["output", "kernel"][i]) + eps_root) + eps
      tau = wd * lr / d_i
      v[i] = v[i] * max(0.0, 1.0 - tau / max(np.linalg.norm(v[i]), 1e-6))
  return p, nu


def test_preconditioned_threshold_matches_numpy_reference():
  params, groups, grads = one_group_with_a_free_leaf()
  schedule = optax.exponential_decay(0.1, 1, 0.5)  # τ must follow the schedule step by step
  wd = 2.0
  tx = pp.pathprox_adamw(schedule, wd, groups, threshold_rule="preconditioned", **ADAM)

  @jax.jit
  def step(params, state, grad):
    updates, state = tx.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  got, state = params, tx.init(params)
  for grad in grads:
    got, state = step(got, state, grad)
  expected, nu = reference_preconditioned(params, grads, schedule, wd, **ADAM)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), got, expected)
  v_norms = np.linalg.norm(expected["output"]["kernel"], axis=1)
  assert np.any(v_norms == 0) and np.any(v_norms > 0)  # both branches of the threshold
  # Adam's second moment holds the raw gradients: the prox does not touch it.
  chex.assert_trees_all_close(optax.tree_utils.tree_get(state, "nu"), nu, rtol=1e-5)
  # The decoupled rule at the same λ is another optimiser.
  decoupled = pp.pathprox_adamw(schedule, wd, groups, **ADAM)
  other = optax.apply_updates(params, decoupled.update(grads[0], decoupled.init(params), params)[0])
  mine = optax.apply_updates(params, tx.update(grads[0], tx.init(params), params)[0])
  assert not np.allclose(other["output"]["kernel"], mine["output"]["kernel"])


def test_preconditioned_threshold_under_inject_hyperparams_and_jit():
  params, groups, grads = one_group_with_a_free_leaf()
  make = optax.inject_hyperparams(pp.pathprox_adamw, static_args=("groups", "threshold_rule"))
  injected = make(
    learning_rate=0.05, weight_decay=0.5, groups=groups, threshold_rule="preconditioned", **ADAM
  )
  direct = pp.pathprox_adamw(0.05, 0.5, groups, threshold_rule="preconditioned", **ADAM)

  def run(tx):
    def step(carry, grad):
      params, state = carry
      updates, state = tx.update(grad, state, params)
      return (optax.apply_updates(params, updates), state), None

    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
    return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), stacked)[0][0])(params)

  chex.assert_trees_all_close(run(injected), run(direct), rtol=1e-6, atol=1e-7)


def test_decoupled_threshold_is_the_default_and_the_plain_chain():
  params, groups, grads = one_group_with_a_free_leaf()
  schedule = optax.exponential_decay(0.1, 1, 0.5)
  chain = optax.chain(
    optax.scale_by_adam(**ADAM),
    optax.add_decayed_weights(0.5, mask={"hidden": {"kernel": False, "bias": False},
                                         "output": {"kernel": False, "bias": False},
                                         "free": {"kernel": True, "bias": False}}),
    optax.scale_by_learning_rate(schedule),
    pp.pathprox(schedule, 0.5, groups),
  )  # fmt: skip
  for tx in (
    pp.pathprox_adamw(schedule, 0.5, groups, **ADAM),
    pp.pathprox_adamw(schedule, 0.5, groups, threshold_rule="decoupled", **ADAM),
  ):
    got, expected = params, params
    state, chain_state = tx.init(params), chain.init(params)
    for grad in grads:
      updates, state = tx.update(grad, state, got)
      got = optax.apply_updates(got, updates)
      updates, chain_state = chain.update(grad, chain_state, expected)
      expected = optax.apply_updates(expected, updates)
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_per_unit_thresholds_equal_to_a_scalar_are_the_scalar_prox():
  params, groups, _ = one_group_with_a_free_leaf()
  scalar = pp.prox(params, groups, 0.3, balance=False)
  per_unit = pp.prox(params, groups, [jnp.full((5,), 0.3)], balance=False)
  jax.tree.map(np.testing.assert_array_equal, per_unit, scalar)


def test_unknown_adamw_threshold_rule_is_a_one_line_error():
  _, groups, _ = one_group_with_a_free_leaf()
  message = "threshold_rule must be one of 'decoupled', 'preconditioned', got 'fixed_point'"
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    pp.pathprox_adamw(0.1, 1e-3, groups, threshold_rule="fixed_point")
  assert "\n" not in str(error.value)
