"""Every public entry refuses a value it cannot honour with a one-line ValueError."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pathprox_jax as pp

G = pp.GroupSpec
PARAMS = {"w": jnp.ones((3, 4)), "v": jnp.array([[1.0], [0.0], [2.0], [0.5]])}
GROUPS = {"w": G(0, "in"), "v": G(0, "out")}
NAN, INF = float("nan"), float("inf")


def _refused(call, message):
  with pytest.raises(ValueError, match=message) as error:
    call()
  assert "\n" not in str(error.value)


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: pp.prox(PARAMS, GROUPS, -1.0), "threshold must be finite and >= 0, got -1.0"),
    (lambda: pp.prox(PARAMS, GROUPS, NAN), "threshold must be finite and >= 0, got nan"),
    (lambda: pp.prox(PARAMS, GROUPS, INF), "threshold must be finite and >= 0, got inf"),
    (lambda: pp.prox(PARAMS, GROUPS, jnp.array([0.1, -0.1, 0.1, 0.1])), "got -0.1"),
    (lambda: pp.prox(PARAMS, GROUPS, "0.1"), "threshold must be a number or an array, got '0.1'"),
    (lambda: pp.prox(PARAMS, GROUPS, 0.1, eps=0.0), "eps must be finite and > 0, got 0.0"),
    (lambda: pp.prox(PARAMS, GROUPS, 0.1, eps=NAN), "eps must be finite and > 0, got nan"),
    (lambda: pp.balance(PARAMS, GROUPS, eps=NAN), "eps must be finite and > 0, got nan"),
    (lambda: pp.compact(PARAMS, GROUPS, atol=NAN), "atol must be finite and >= 0, got nan"),
    (lambda: pp.compact(PARAMS, GROUPS, atol=-1), "atol must be finite and >= 0, got -1.0"),
    (lambda: pp.compact(PARAMS, GROUPS, atol="0"), "atol must be a number, got '0'"),
  ],
  ids=[
    "prox-threshold-negative",
    "prox-threshold-nan",
    "prox-threshold-inf",
    "prox-threshold-array",
    "prox-threshold-string",
    "prox-eps-zero",
    "prox-eps-nan",
    "balance-eps-nan",
    "compact-atol-nan",
    "compact-atol-negative",
    "compact-atol-string",
  ],
)
def test_functions_refuse(call, message):
  _refused(call, message)


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: pp.pathprox_sgd("0.1", 1e-4, GROUPS), "learning_rate must be a number or a sch"),
    (lambda: pp.pathprox_sgd(0.1, "1e-4", GROUPS), "weight_decay must be a number or a sched"),
    (lambda: pp.pathprox_sgd(0.1, 1e-4, GROUPS, momentum="0.9"), "momentum must be a number, g"),
    (lambda: pp.pathprox_sgd(0.1, 1e-4, GROUPS, eps=NAN), "eps must be finite and > 0, got nan"),
    (lambda: pp.pathprox(0.1, 1e-4, GROUPS, eps=-1.0), "eps must be finite and > 0, got -1.0"),
    (lambda: pp.pathprox(0.1, None, GROUPS), "weight_decay must be a number or a schedule, got"),
    (lambda: pp.pathprox_adamw(0.1, 1e-4, GROUPS, b1=1.0), "b1 must be in \\[0, 1\\), got 1.0"),
    (lambda: pp.pathprox_adamw(0.1, 1e-4, GROUPS, b1=-0.1), "b1 must be in \\[0, 1\\), got -0.1"),
    (lambda: pp.pathprox_adamw(0.1, 1e-4, GROUPS, b2=1.0), "b2 must be in \\[0, 1\\), got 1.0"),
    (lambda: pp.pathprox_adamw(0.1, 1e-4, GROUPS, b2=NAN), "b2 must be in \\[0, 1\\), got nan"),
    (lambda: pp.pathprox_adamw(0.1, 1e-4, GROUPS, eps=-1), "eps must be finite and >= 0, got -1"),
    (lambda: pp.pathprox_adamw(0.1, 1e-4, GROUPS, eps_root=NAN), "eps_root must be finite and >"),
    (lambda: pp.pathprox_adamw(0.1, 1e-4, GROUPS, prox_eps=0.0), "prox_eps must be finite and >"),
    (lambda: pp.pathprox_adamw("1e-3", 1e-4, GROUPS), "learning_rate must be a number or a sch"),
  ],
  ids=[
    "sgd-lr-string",
    "sgd-wd-string",
    "sgd-momentum-string",
    "sgd-eps-nan",
    "pathprox-eps-negative",
    "pathprox-wd-none",
    "adamw-b1-one",
    "adamw-b1-negative",
    "adamw-b2-one",
    "adamw-b2-nan",
    "adamw-eps-negative",
    "adamw-eps-root-nan",
    "adamw-prox-eps-zero",
    "adamw-lr-string",
  ],
)
def test_transforms_refuse_when_built(make, message):
  _refused(make, message)


def test_boundary_values_pass():
  pp.prox(PARAMS, GROUPS, 0.0)
  pp.prox(PARAMS, GROUPS, np.array([0.0, 0.1, 0.2, 0.3]))  # one threshold per unit
  pp.compact(PARAMS, GROUPS, atol=0.0)
  pp.pathprox_adamw(0.1, 0.0, GROUPS, b1=0.0, b2=0.0, eps=0.0)
  pp.pathprox_sgd(jnp.float32(0.1), np.float64(1e-4), GROUPS, momentum=jnp.array(0.9))


def test_traced_thresholds_and_schedules_pass():
  step = jax.jit(lambda p, t: pp.prox(p, GROUPS, t))
  expected = pp.prox(PARAMS, GROUPS, 0.6)
  jax.tree.map(np.testing.assert_array_equal, step(PARAMS, 0.6), expected)
  schedule = optax.cosine_decay_schedule(0.1, 10)
  pp.pathprox_sgd(schedule, schedule, GROUPS, momentum=0.9)
  pp.pathprox_adamw(schedule, schedule, GROUPS)


@pytest.mark.slow
@pytest.mark.parametrize(
  "factory, kwargs",
  [
    (pp.pathprox_sgd, {"momentum": 0.9, "eps": 1e-6}),
    (pp.pathprox_adamw, {"b1": 0.8, "b2": 0.99, "eps": 1e-8, "prox_eps": 1e-6}),
  ],
  ids=["sgd", "adamw"],
)
def test_injected_hyperparameters_are_traced_under_jit(factory, kwargs):
  make = optax.inject_hyperparams(factory, static_args=("groups",))
  tx = make(learning_rate=0.1, weight_decay=1e-2, groups=GROUPS, **kwargs)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(PARAMS), PARAMS)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
