"""pp.compact_state: one step on the compacted model from the sliced optimiser state equals the
dense step restricted to the kept units (SGD with momentum, AdamW, a healing budget)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pathprox_jax as pp


class Net(nn.Module):
  """6-w0-5-w1-3: groups 0 and 1 of widths w0 and w1."""

  widths: tuple[int, int] = (8, 6)

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.widths[0], **pp.group_inits(0, "in"))(x))
    x = nn.Dense(5, **pp.group_inits(0, "out"))(x)
    x = nn.relu(nn.Dense(self.widths[1], **pp.group_inits(1, "in"))(x))
    return nn.Dense(3, **pp.group_inits(1, "out"))(x)


X = jax.random.normal(jax.random.key(0), (16, 6))
Y = jnp.arange(16) % 3
BOXED = Net().init(jax.random.key(1), X)["params"]
GROUPS = pp.group_spec(BOXED)
OFF = {0: ("Dense_0", "Dense_1", np.array([1, 4, 5])), 1: ("Dense_2", "Dense_3", np.array([0, 3]))}


def dense_params():
  """Net's params with units OFF switched off: in columns, in biases and out rows zero."""
  params = jax.tree.map(jnp.asarray, nn.meta.unbox(BOXED))
  for w, v, off in OFF.values():
    params[w]["kernel"] = params[w]["kernel"].at[:, off].set(0.0)
    params[w]["bias"] = params[w]["bias"].at[off].set(0.0)
    params[v]["kernel"] = params[v]["kernel"].at[off, :].set(0.0)
  return params


def step(tx, widths, params, state):
  def loss(p):
    logits = Net(widths).apply({"params": p}, X)
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()

  updates, state = tx.update(jax.grad(loss)(params), state, params)
  return optax.apply_updates(params, updates), state


TRANSFORMS = {
  "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
  "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2),
  "budget_sgd_healing": lambda: pp.budget_sgd(
    0.1, 1e-3, GROUPS, target=0.5, prox_start=0, heal_start=1, momentum=0.9, selection="magnitude"
  ),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_compacted_step_equals_the_dense_step_restricted(name):
  tx = TRANSFORMS[name]()
  params = dense_params()
  state = tx.init(params)
  if name == "budget_sgd_healing":  # freeze the mask to the units on: heal from then on
    on = {g: norms > 0 for g, norms in pp.unit_path_norms(params, GROUPS).items()}
    state = state._replace(masks=on, count=jnp.ones((), jnp.int32))
  widths = (8, 6)
  for _ in range(3):  # fill the momentum / moments
    params, state = jax.jit(lambda p, s: step(tx, widths, p, s))(params, state)
  smaller, kept = pp.compact(params, GROUPS)
  assert [k.width for k in kept.values()] == [5, 4]
  small_state = pp.compact_state(tx, state, GROUPS, kept)
  small_widths = tuple(k.width for k in kept.values())
  dense_next, dense_state = jax.jit(lambda p, s: step(tx, widths, p, s))(params, state)
  small_next, small_state = jax.jit(lambda p, s: step(tx, small_widths, p, s))(smaller, small_state)
  keep = {g: k.indices for g, k in kept.items()}
  restricted = pp.compact(dense_next, GROUPS, keep=keep)[0]
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # noqa: E731
  jax.tree.map(close, small_next, restricted)  # the products sum in another order
  expected = pp.compact_state(tx, dense_state, GROUPS, kept)
  if name == "budget_sgd_healing":  # the fraction kept of the model it steps: all of the small one
    assert float(small_state.kept_fraction) == 1.0
    expected = expected._replace(kept_fraction=small_state.kept_fraction)
  jax.tree.map(close, small_state, expected)
