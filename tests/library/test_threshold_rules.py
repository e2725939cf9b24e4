"""The threshold rules: which objective PathProx-SGD minimises under momentum.

A heavy-ball trace settles at ∇L/(1−β). With the "fixed_point" rule (τ = λγ/(1−β)) PathProx-SGD
at momentum β and step γ(1−β) has the fixed points of plain PathProx-SGD at step γ: those of
L + λR. With the "paper" rule (τ = λγ) they are those of L + λ(1−β)R, a weaker regulariser.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pathprox_jax as pp

G = pp.GroupSpec
LAMBDA, GAMMA, BETA, STEPS = 0.05, 0.1, 0.9, 4000


def regression_problem():
  """A full-batch ReLU regression: a 12-unit student of a 3-unit teacher, float32."""
  rng = np.random.default_rng(0)
  n, d, hidden = 200, 5, 12
  x = rng.standard_normal((n, d))
  y = np.maximum(x @ rng.standard_normal((d, 3)), 0) @ rng.standard_normal((3, 1))
  y = y + 0.1 * rng.standard_normal((n, 1))
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  params = {
    "hidden": {"kernel": rng.standard_normal((d, hidden)) / np.sqrt(d), "bias": np.zeros(hidden)},
    "output": {"kernel": rng.standard_normal((hidden, 1)) / np.sqrt(hidden), "bias": np.zeros(1)},
  }
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
  groups = {
    "hidden": {"kernel": G(0, "in"), "bias": G(0, "in")},
    "output": {"kernel": G(0, "out"), "bias": G(0, "out")},
  }

  def loss(p):
    hidden_out = jax.nn.relu(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    return 0.5 * jnp.mean((hidden_out @ p["output"]["kernel"] + p["output"]["bias"] - y) ** 2)

  return params, groups, loss


def train(tx, params, loss):
  """``STEPS`` full-batch steps of ``tx`` from ``params`` (a fresh optimiser state)."""

  def step(_, carry):
    params, state = carry
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(lambda p: jax.lax.fori_loop(0, STEPS, step, (p, tx.init(p)))[0])(params)


def objective_and_alive(params, groups, loss):
  """The named objective L + λR and which hidden units are alive (nonzero output weights)."""
  objective = float(pp.weight_decay_objective(loss(params), params, groups, LAMBDA))
  return objective, tuple(np.linalg.norm(params["output"]["kernel"], axis=1) > 0)


def test_fixed_point_rule_under_momentum_reaches_the_plain_sgd_point():
  """Momentum β at step γ(1−β) stays at plain PathProx-SGD's limit point; the paper rule leaves it.

  The problem is not convex, so the two dynamics' transients could pick different minima from
  one random start; the fixed points are what the rule decides. Every run therefore starts where
  plain PathProx-SGD (step γ) has converged and runs to convergence again.
  """
  params, groups, loss = regression_problem()
  start = train(pp.pathprox_sgd(GAMMA, LAMBDA, groups), params, loss)
  plain = objective_and_alive(
    train(pp.pathprox_sgd(GAMMA, LAMBDA, groups), start, loss), groups, loss
  )
  start_objective, start_alive = objective_and_alive(start, groups, loss)
  np.testing.assert_allclose(plain[0], start_objective, rtol=1e-4)  # converged
  assert plain[1] == start_alive and 0 < sum(start_alive) < len(start_alive)  # some units died

  def momentum_run(rule):
    tx = pp.pathprox_sgd(GAMMA * (1 - BETA), LAMBDA, groups, momentum=BETA, threshold_rule=rule)
    return objective_and_alive(train(tx, start, loss), groups, loss)

  fixed_point = momentum_run("fixed_point")
  np.testing.assert_allclose(fixed_point[0], plain[0], rtol=1e-4)
  assert fixed_point[1] == plain[1]

  paper = momentum_run("paper")  # the regulariser is 10x weaker: a unit comes back, L + λR grows
  assert paper[0] > 1.05 * plain[0]
  assert sum(paper[1]) > sum(plain[1])
