"""The group soft-threshold is exact at every threshold: zero at or below it, the exact
shrink above it, with no clip of ‖v_i‖ (the reference's clip at 1e-6 is not copied)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pathprox_jax as pp

G = pp.GroupSpec
GROUPS = {"w": G(0, "in"), "v": G(0, "out")}
# Unit i's out-row norm: on either side of each threshold below (no ties), and under the old clip.
ROW_NORMS = np.array([0.0, 5e-10, 0.9e-9, 1.1e-9, 5e-8, 0.9e-7, 1.2e-7, 0.9e-6, 2e-6, 0.5])


def _params(dtype=jnp.float32):
  v = np.zeros((ROW_NORMS.size, 2))
  v[:, 0], v[:, 1] = 0.6 * ROW_NORMS, 0.8 * ROW_NORMS
  w = np.ones((3, ROW_NORMS.size)) / np.sqrt(3.0)
  return {"w": jnp.asarray(w, dtype), "v": jnp.asarray(v, dtype)}


def _reference(v: np.ndarray, tau: float) -> np.ndarray:
  """The exact prox of tau‖v_i‖, row by row, in float64."""
  norm = np.linalg.norm(v, axis=1, keepdims=True)
  return np.where(norm <= tau, 0.0, v * (1 - tau / np.where(norm > 0, norm, 1.0)))


@pytest.mark.parametrize("tau", [0.0, 1e-9, 1e-7, 1e-6, 1e-3])
def test_prox_zeroes_every_unit_at_or_below_the_threshold(tau):
  params = _params()
  new = pp.prox(params, GROUPS, threshold=tau, balance=False)
  v = np.asarray(new["v"], np.float64)
  expected = _reference(np.asarray(params["v"], np.float64), tau)
  assert np.array_equal(v == 0, expected == 0), (tau, np.linalg.norm(v, axis=1))
  np.testing.assert_allclose(v, expected, rtol=1e-5, atol=0)


def test_zero_threshold_leaves_every_unit_as_it_is():
  params = _params()
  new = pp.prox(params, GROUPS, threshold=0.0, balance=False)
  np.testing.assert_array_equal(new["v"], params["v"])


def test_bfloat16_units_at_or_below_the_threshold_are_exactly_zero():
  params = _params(jnp.bfloat16)
  new = pp.prox(params, GROUPS, threshold=1e-7, balance=False)
  norms = np.linalg.norm(np.asarray(params["v"], np.float32), axis=1)
  zero = np.all(np.asarray(new["v"], np.float32) == 0, axis=1)
  np.testing.assert_array_equal(zero, norms <= 1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["sgd", "adamw"])
def test_recipes_zero_small_units_through_a_schedules_tail(recipe):
  """A cosine schedule's last steps have λγ far below 1e-6: a unit under it still dies."""
  schedule = optax.cosine_decay_schedule(1e-3, decay_steps=4)
  factory = pp.pathprox_sgd if recipe == "sgd" else pp.pathprox_adamw
  tx = (
    factory(schedule, 1e-4, GROUPS, balance=False)
    if recipe == "sgd"
    else factory(schedule, 1e-4, GROUPS)
  )
  params = _params()
  state = tx.init(params)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  for step in range(4):
    tau = float(schedule(step)) * 1e-4
    before = np.linalg.norm(np.asarray(params["v"], np.float64), axis=1)
    updates, state = tx.update(zero_grads, state, params)
    params = optax.apply_updates(params, updates)
    after = np.linalg.norm(np.asarray(params["v"], np.float64), axis=1)
    np.testing.assert_array_equal(after == 0, before <= tau * (1 + 1e-6), err_msg=f"step {step}")
