"""FLOPs budgets: the cubic ramp, the controller of lambda meeting its target (jit, vmap), the
frozen heal with zeroed optimiser state, gradual magnitude pruning, and the argument checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pathprox_jax as pp
from pathprox_jax._src import budget

PROX_START, HEAL_START, STEPS = 20, 220, 240


class Net(nn.Module):
  """10-64-16-48-3: two groups of 64 and 48 neurons."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(64, **pp.group_inits(0, "in"))(x))
    x = nn.Dense(16, **pp.group_inits(0, "out"))(x)
    x = nn.relu(nn.Dense(48, **pp.group_inits(1, "in"))(x))
    return nn.Dense(3, **pp.group_inits(1, "out"))(x)


X = jax.random.normal(jax.random.key(0), (256, 10))
Y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(jnp.int32) + (X[:, 3] > 1).astype(jnp.int32)
MODEL = Net()
BOXED = MODEL.init(jax.random.key(0), X[:1])["params"]
GROUPS = pp.group_spec(BOXED)
PARAMS = nn.meta.unbox(BOXED)
COSTS = pp.unit_costs(lambda p, x: MODEL.apply({"params": p}, x), PARAMS, X, groups=GROUPS)


def loss(params):
  logits = MODEL.apply({"params": params}, X)
  return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def make_tx(target, selection="prox", factory=pp.budget_sgd, **kwargs):
  kwargs.setdefault("momentum", 0.9) if factory is pp.budget_sgd else None
  lr = 0.05 if factory is pp.budget_sgd else 3e-3
  return factory(lr, 1e-3, GROUPS, target=target, prox_start=PROX_START, heal_start=HEAL_START,
                 selection=selection, unit_costs=COSTS, **kwargs)  # fmt: skip


def train(targets, selection="prox", factory=pp.budget_sgd, steps=STEPS):
  """Trains one member per target (vmapped, in one jitted scan); returns the kept fraction
  and the masks (``{group: [member, step, unit]}``) after every step, and the final params and
  state."""

  def step(carry, _):
    params, state, target = carry
    tx = make_tx(target, selection, factory)
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
    return (params, state, target), (state.kept_fraction, state.masks)

  @jax.jit
  @jax.vmap
  def run(params, state, target):
    (params, state, _), (kept, masks) = jax.lax.scan(step, (params, state, target), length=steps)
    return params, state, kept, masks

  members = len(targets)
  params = jax.tree.map(lambda p: jnp.stack([p] * members), PARAMS)
  state = jax.vmap(make_tx(0.5, selection, factory).init)(params)
  params, state, kept, masks = run(params, state, jnp.asarray(targets, jnp.float32))
  return np.asarray(kept).T, {g: np.asarray(m) for g, m in masks.items()}, params, state


def cheapest_on(masks, member):
  """After every step, the kept fraction one unit of the cheapest group with a unit on holds:
  how far a magnitude cut may keep more than it is asked."""
  total = sum(COSTS[g] * n for g, n in pp.unit_counts(PARAMS, GROUPS).items())
  on = [np.where(m[member].any(-1), COSTS[g], np.inf) for g, m in masks.items()]
  return np.min(on, axis=0) / total


def greedy_off(scores, costs, fraction, fill=True):
  """The units a cost-aware magnitude cut switches off, one at a time: ranked by score / cost
  (ties in order of group, then unit), each goes if its cost still fits in what the fraction
  lets go, else it is skipped (``fill``) or the cut stops."""
  ranked = sorted((float(scores[g][i]) / costs[g], g, i) for g in scores for i in
                  range(len(scores[g])))  # fmt: skip
  left = (1 - fraction) * sum(costs[g] * len(scores[g]) for g in scores) * (1 + 1e-6)
  off = set()
  for _, g, i in ranked:
    if costs[g] <= left:
      left -= costs[g]
      off.add((g, i))
    elif not fill:
      break
  return off


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.52, 0.6, 0.9])
def test_magnitude_cut_skips_a_dear_unit_that_does_not_fit(fraction):
  """Three costs (a neuron, a wider neuron, a head of 36): the cut is the one-at-a-time greedy
  with skips (``fill``, else it stops at the first misfit), so the kept fraction exceeds the
  target by less than the cheapest unit on."""
  keys = jax.random.split(jax.random.key(1), 3)
  scores = {g: jax.random.uniform(keys[g], (n,)) for g, n in enumerate((40, 30, 6))}
  scores[0] = scores[0].at[:5].set(0.0)  # units already off
  costs = {0: 1.0, 1: 3.0, 2: 36.0}
  cut = jax.jit(lambda s, f, fill: pp.magnitude_masks(s, costs, f, fill=fill), static_argnums=2)
  stops = cut(scores, fraction, False)
  off = {(g, i) for g, m in stops.items() for i in np.flatnonzero(~np.asarray(m))}
  assert off == greedy_off(scores, costs, fraction, fill=False)
  masks = cut(scores, fraction, True)
  off = {(g, i) for g, m in masks.items() for i in np.flatnonzero(~np.asarray(m))}
  assert off == greedy_off(scores, costs, fraction)
  total = sum(costs[g] * len(s) for g, s in scores.items())
  kept = sum(costs[g] * float(m.sum()) for g, m in masks.items()) / total
  cheapest_on = min(costs[g] for g, m in masks.items() if bool(m.any()))
  assert fraction - 1e-6 <= kept < fraction + cheapest_on / total


def test_ramp_is_cubic_from_one_to_the_target():
  ramp = [float(budget.ramp(0.2, t, 10, 20)) for t in (0, 9, 14, 19, 30)]
  np.testing.assert_allclose(ramp, [1.0, 1.0, 0.2 + 0.8 * 0.5**3, 0.2, 0.2], rtol=1e-6)


@pytest.mark.parametrize("kept_threshold", ["cost", "uniform"])
def test_the_controller_penalises_only_the_candidates(kept_threshold):
  """At a sparsify step with a zero gradient, the units beyond the ramp's ranking get the
  boosted threshold (here e^30 times lambda: they go), the kept ones exactly the user's: c_g
  tau, or tau where the kept threshold is uniform."""
  tx = make_tx(0.5, balance=False, kept_threshold=kept_threshold)
  count = PROX_START + 50
  state = tx.init(PARAMS)._replace(count=jnp.int32(count), log_scale=jnp.float32(30.0))
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  new = optax.apply_updates(PARAMS, jax.jit(tx.update)(zeros, state, PARAMS)[0])
  costs = pp.relative_costs(COSTS)
  old_norms = pp.unit_path_norms(PARAMS, GROUPS)  # ||w_i|| ||v_i||, and ||w_i|| is 1 after
  new_norms = pp.unit_path_norms(new, GROUPS)
  goal = float(budget.ramp(0.5, count, PROX_START, HEAL_START))
  off = greedy_off(old_norms, costs, goal, fill=False)  # the ramp's cut stops at a misfit
  tau = 1e-3 * 0.05 / (1 - 0.9)  # lambda gamma / (1 - beta)
  v_norms = {0: np.linalg.norm(PARAMS["Dense_1"]["kernel"], axis=1),
             1: np.linalg.norm(PARAMS["Dense_3"]["kernel"], axis=1)}  # fmt: skip
  for g in costs:
    for i in range(len(new_norms[g])):
      kept_cost = costs[g] if kept_threshold == "cost" else 1.0
      expected = 0.0 if (g, i) in off else v_norms[g][i] - kept_cost * tau
      np.testing.assert_allclose(float(new_norms[g][i]), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_prox_budget_meets_each_members_target_and_heals_frozen():
  targets = [0.3, 0.6]
  kept, masks, params, state = train(targets)
  frozen = {g: m[:, HEAL_START - 1] for g, m in masks.items()}
  assert np.all(kept[:PROX_START] == 1.0)  # warm-up: dense
  # The controller alone, at the last step before the freeze, and the frozen mask: within 2%.
  np.testing.assert_allclose(kept[HEAL_START - 2], targets, atol=0.02)
  # The freeze tops the mask up both ways: the target, from above, to within the cheapest unit.
  cheapest = np.array([cheapest_on(masks, member)[-1] for member in range(2)])
  assert np.all(kept[-1] >= np.asarray(targets) - 1e-6)
  assert np.all(kept[-1] <= np.asarray(targets) + cheapest + 1e-6)
  for member in range(2):
    member_params = jax.tree.map(lambda p, m=member: p[m], params)
    active = pp.unit_path_norms(member_params, GROUPS)
    for g, mask in frozen.items():
      np.testing.assert_array_equal(active[g] > 0, mask[member])  # the heal kept the mask
  # Off units' slices of the params and of the momentum trace are exactly zero.
  trace = state.base[1][0].trace
  for g, (w, v) in {0: ("Dense_0", "Dense_1"), 1: ("Dense_2", "Dense_3")}.items():
    off = ~frozen[g]
    for tree in (params, trace):
      assert np.all(np.asarray(tree[w]["kernel"])[off[:, None, :].repeat(10 if g == 0 else 16, 1)]
                    == 0)  # fmt: skip
      assert np.all(np.asarray(tree[v]["kernel"]).transpose(0, 2, 1)[off[:, None, :].repeat(
        16 if g == 0 else 3, 1)] == 0)  # fmt: skip
      assert np.all(np.asarray(tree[w]["bias"])[off] == 0)


@pytest.mark.slow
def test_gradual_magnitude_pruning_follows_the_ramp_and_zeroes_adam_moments():
  kept, masks, params, state = train([0.4], "magnitude", pp.budget_adamw)
  frozen = {g: m[:, HEAL_START - 1] for g, m in masks.items()}
  ramp = np.array([float(budget.ramp(0.4, t, PROX_START, HEAL_START)) for t in range(STEPS)])
  dearest = max(COSTS.values()) / sum(
    COSTS[g] * n for g, n in pp.unit_counts(PARAMS, GROUPS).items()
  )
  assert np.all(kept[:, 0] >= ramp - 1e-6)
  assert np.all(kept[:, 0] <= ramp + dearest + 1e-6)  # the ramp's cuts stop at a dear unit
  assert kept[-1, 0] <= 0.4 + cheapest_on(masks, 0)[-1] + 1e-6  # the freeze's fills in
  assert np.all(np.diff(kept[:, 0]) <= 1e-7)  # once off, off
  adam = state.base[0]
  for g, (w, v) in {0: ("Dense_0", "Dense_1"), 1: ("Dense_2", "Dense_3")}.items():
    off = ~frozen[g][0]
    for tree in (params, adam.mu, adam.nu):
      assert np.all(np.asarray(tree[w]["kernel"])[0][:, off] == 0)
      assert np.all(np.asarray(tree[v]["kernel"])[0][off, :] == 0)


@pytest.mark.slow
def test_warm_up_is_the_base_step():
  tx = make_tx(0.5)
  base = optax.chain(
    optax.add_decayed_weights(1e-3, mask=lambda p: pp.decayed_mask(p, GROUPS)),
    optax.sgd(0.05, momentum=0.9),
  )
  grads = jax.grad(loss)(PARAMS)
  updates, state = jax.jit(tx.update)(grads, tx.init(PARAMS), PARAMS)
  expected, _ = jax.jit(base.update)(grads, base.init(PARAMS), PARAMS)
  jax.tree.map(np.testing.assert_array_equal, updates, expected)
  assert int(state.count) == 1


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(target=1.5), r"target must be in \(0, 1\], got 1.5"),
    (dict(prox_start=30, heal_start=30), "0 <= prox_start < heal_start, got 30 and 30"),
    (dict(selection="random"), "selection must be 'prox' or 'magnitude', got 'random'"),
    (dict(kept_threshold="free"), "kept_threshold must be 'cost' or 'uniform', got 'free'"),
    (dict(weight_decay=0.0), r"weight_decay must be finite and > 0, got 0.0"),
    (dict(learning_rate=None), "selection='prox' needs learning_rate and weight_decay"),
  ],
)
def test_bad_arguments_are_refused(kwargs, message):
  args = dict(target=0.5, prox_start=1, heal_start=10, learning_rate=0.1, weight_decay=1e-3)
  with pytest.raises(ValueError, match=message):
    pp.with_budget(optax.sgd(0.1), GROUPS, **{**args, **kwargs})


@pytest.mark.slow
def test_heal_weight_decay_decays_the_kept_grouped_kernels_only_when_healing():
  def update(count, heal_weight_decay):
    tx = pp.with_budget(
      optax.sgd(0.1), GROUPS, target=0.5, prox_start=1, heal_start=2, learning_rate=0.1,
      weight_decay=1e-3, heal_weight_decay=heal_weight_decay,
    )  # fmt: skip
    state = tx.init(PARAMS)._replace(count=jnp.asarray(count, jnp.int32))
    return jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, PARAMS), state, PARAMS)[0]

  healing = update(2, 0.5)
  expected = -0.05 * PARAMS["Dense_0"]["kernel"]
  np.testing.assert_allclose(healing["Dense_0"]["kernel"], expected, rtol=1e-5, atol=1e-8)
  np.testing.assert_array_equal(healing["Dense_0"]["bias"], 0.0)  # kernels only
  np.testing.assert_array_equal(update(2, 0.0)["Dense_3"]["kernel"], 0.0)  # no penalty
  np.testing.assert_array_equal(update(0, 0.5)["Dense_0"]["kernel"], 0.0)  # warm-up: none
