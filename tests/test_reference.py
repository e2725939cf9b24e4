"""PathProx against an independent float64 NumPy reference written from the paper's maths.

The reference loops over units in plain NumPy and follows the algorithm literally: weight decay
on ungrouped kernels, SGD (with momentum), then per group the sequential layer balance, the
normalisation of each unit's input weights and the group soft-threshold of its output weights.
"""

import jax
import numpy as np
import optax
import pytest

import pathprox_jax as pp

EPS = 1e-6
G = pp.GroupSpec

# name: (kernel shape, has bias, (group, role) or None). Names are chosen so that the flattening
# order (alphabetical) differs from the group order, and some grouped layers have no bias.
DENSE = {
  "a_in1": ((5, 4), True, (1, "in")),
  "b_out1": ((4, 3), False, (1, "out")),
  "c_free": ((3, 2), True, None),
  "d_in0": ((6, 5), True, (0, "in")),
  "e_out0": ((5, 5), True, (0, "out")),
  "f_in2": ((3, 6), False, (2, "in")),
  "g_out2": ((6, 3), True, (2, "out")),
}
CONV = {
  "conv_a": ((3, 3, 2, 4), True, (0, "in")),
  "conv_b": ((3, 3, 4, 5), True, (0, "out")),
  "conv_c": ((2, 2, 5, 3), True, (1, "in")),
  "dense": ((3, 2), True, (1, "out")),
  "free": ((2, 2, 2, 2), True, None),
}
NETS = {"dense": DENSE, "conv": CONV}


def make_params(net, seed=0):
  """Random float32 params (per-layer scales differ, so the groups start unbalanced)."""
  rng = np.random.default_rng(seed)
  params = {}
  for i, (name, (shape, has_bias, _)) in enumerate(net.items()):
    scale = 0.3 * (1 + i % 3)
    params[name] = {"kernel": (scale * rng.standard_normal(shape)).astype(np.float32)}
    if has_bias:
      params[name]["bias"] = (0.1 * rng.standard_normal(shape[-1])).astype(np.float32)
  return params


def make_groups(net):
  """The spec pytree, as pathprox_jax.group_spec would build it."""
  groups = {}
  for name, (_, has_bias, group) in net.items():
    spec = None if group is None else G(*group)
    groups[name] = {"kernel": spec, **({"bias": spec} if has_bias else {})}
  return groups


def layer_names(net):
  """[(w layer, v layer)] per group, in group order."""
  names = {group: name for name, (_, _, group) in net.items() if group is not None}
  return [(names[(k, "in")], names[(k, "out")]) for k in range(len(names) // 2)]


def w_unit(p, layer, i):
  return p[layer]["kernel"][..., i]


def v_unit(p, layer, i):
  return p[layer]["kernel"][..., i, :]


def units(p, layer):
  return p[layer]["kernel"].shape[-1]


def unit_rows(v):
  """An "out" kernel as one row per unit (its axis -2)."""
  return np.moveaxis(np.asarray(v, np.float64), -2, 0).reshape(v.shape[-2], -1)


def group_path_norm(p, w_layer, v_layer):
  return sum(
    np.linalg.norm(w_unit(p, w_layer, i)) * np.linalg.norm(v_unit(p, v_layer, i))
    for i in range(units(p, w_layer))
  )


def scale_bias(p, layer, s):
  if "bias" in p[layer]:
    p[layer]["bias"] = p[layer]["bias"] * s


def ref_prox(p, net, tau, balance, regularize_bias):
  """Balance (sequentially, group after group), normalise w, soft-threshold v; in place."""
  groups = layer_names(net)
  if balance and not regularize_bias:
    norms = [group_path_norm(p, w, v) for w, v in groups]
    if min(norms) > EPS:
      target = np.exp(np.mean(np.log(norms)))
      for k in range(len(groups) - 1):
        s = target / group_path_norm(p, *groups[k])
        p[groups[k][1]]["kernel"] = p[groups[k][1]]["kernel"] * s
        scale_bias(p, groups[k][1], s)
        scale_bias(p, groups[k + 1][0], s)
        p[groups[k + 1][1]]["kernel"] = p[groups[k + 1][1]]["kernel"] / s
  for w_layer, v_layer in groups:
    for i in range(units(p, w_layer)):
      w_i = w_unit(p, w_layer, i)
      has_bias = "bias" in p[w_layer]
      if regularize_bias and has_bias:
        norm = np.linalg.norm(np.append(w_i.ravel(), p[w_layer]["bias"][i]))
      else:
        norm = np.linalg.norm(w_i)
      p[w_layer]["kernel"][..., i] = w_i / max(norm, EPS)
      if has_bias:
        p[w_layer]["bias"][i] /= max(norm, EPS)
      v_i = v_unit(p, v_layer, i)
      p[v_layer]["kernel"][..., i, :] = v_i * max(0.0, 1.0 - tau / max(np.linalg.norm(v_i), EPS))


def is_decayed(net, layer, leaf, regularize_bias):
  group = net[layer][2]
  if group is None:
    return leaf == "kernel" or regularize_bias
  return regularize_bias and group[1] == "out" and leaf == "bias"


def ref_steps(params, grads, net, schedule, wd, momentum, nesterov, balance, regularize_bias):
  """Runs the whole PathProx-SGD recipe in float64; returns params and the momentum trace."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  trace = jax.tree.map(np.zeros_like, p)
  for t, g in enumerate(grads):
    lr = float(schedule(t))
    for layer, leaves in p.items():
      for leaf in leaves:
        d = np.asarray(g[layer][leaf], np.float64)
        if is_decayed(net, layer, leaf, regularize_bias):
          d = d + wd * leaves[leaf]
        trace[layer][leaf] = d + momentum * trace[layer][leaf]
        direction = d + momentum * trace[layer][leaf] if nesterov else trace[layer][leaf]
        leaves[leaf] = leaves[leaf] - lr * direction
    ref_prox(p, net, wd * lr, balance, regularize_bias)
  return p, trace


CASES = {
  "dense": dict(net="dense"),
  "dense-no-balance": dict(net="dense", balance=False),
  "dense-regularize-bias": dict(net="dense", regularize_bias=True),
  "dense-momentum": dict(net="dense", momentum=0.9),
  "dense-nesterov-schedule": dict(net="dense", momentum=0.5, nesterov=True, schedule=True),
  "conv": dict(net="conv"),
  "conv-no-balance-momentum": dict(net="conv", balance=False, momentum=0.9),
  "conv-regularize-bias-schedule": dict(net="conv", regularize_bias=True, schedule=True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_pathprox_sgd_matches_numpy_reference(case):
  net = NETS[case["net"]]
  momentum, nesterov = case.get("momentum", 0.0), case.get("nesterov", False)
  balance, regularize_bias = case.get("balance", True), case.get("regularize_bias", False)
  # The schedule halves the step each time: tau must follow it step by step.
  lr = optax.exponential_decay(0.4, 1, 0.5) if case.get("schedule") else 0.2
  wd = 1.5
  params, groups = make_params(net), make_groups(net)
  grads = [make_params(net, seed) for seed in (1, 2, 3)]
  tx = pp.pathprox_sgd(
    lr,
    wd,
    groups,
    momentum=momentum,
    nesterov=nesterov,
    balance=balance,
    regularize_bias=regularize_bias,
  )

  @jax.jit
  def step(params, state, grad):
    updates, state = tx.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  jax_params = params
  for grad in grads:
    jax_params, state = step(jax_params, state, grad)

  schedule = lr if callable(lr) else (lambda _: lr)
  expected, trace = ref_steps(
    params, grads, net, schedule, wd, momentum, nesterov, balance, regularize_bias
  )
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), jax_params, expected
  )
  # The prox must exercise both branches of the soft-threshold.
  v_norms = np.concatenate(
    [np.linalg.norm(unit_rows(expected[v]["kernel"]), axis=1) for _, v in layer_names(net)]
  )
  assert np.any(v_norms == 0) and np.any(v_norms > 0)
  if momentum:
    # The trace holds the (decayed) gradients only: the prox never touches it.
    jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
      optax.tree_utils.tree_get(state, "trace"),
      trace,
    )


@pytest.mark.parametrize("net", ["dense", "conv"])
def test_prox_output_step_is_exact_group_soft_threshold(net):
  """x = prox(z) minimises 1/2 ||x - z||^2 + tau ||x|| per unit: check optimality conditions."""
  params, groups = make_params(NETS[net]), make_groups(NETS[net])
  tau = 1.0
  for w_layer, v_layer in layer_names(NETS[net]):
    w = params[w_layer]["kernel"]
    params[w_layer]["kernel"] = w / np.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0)
    # Spread the units' output norms on both sides of tau.
    v = params[v_layer]["kernel"]
    scale = np.linspace(0.2, 3.0, v.shape[-2]) / np.linalg.norm(unit_rows(v), axis=1)
    params[v_layer]["kernel"] = (v * scale[:, None]).astype(np.float32)

  new = pp.prox(params, groups, tau, balance=False)
  for w_layer, v_layer in layer_names(NETS[net]):
    np.testing.assert_allclose(new[w_layer]["kernel"], params[w_layer]["kernel"], rtol=1e-6)
    z, x = unit_rows(params[v_layer]["kernel"]), unit_rows(new[v_layer]["kernel"])
    x_norms, z_norms = np.linalg.norm(x, axis=1), np.linalg.norm(z, axis=1)
    alive = x_norms > 0
    assert 0 < alive.sum() < len(alive)
    residual = x[alive] - z[alive] + tau * x[alive] / x_norms[alive, None]
    np.testing.assert_allclose(residual, 0.0, atol=1e-5)
    assert np.all(z_norms[~alive] <= tau)


def test_metrics_match_numpy():
  params, groups = make_params(DENSE), make_groups(DENSE)
  # Switch units off three ways: no input weights, no output weights, both.
  params["d_in0"]["kernel"][:, 1] = 0.0
  params["e_out0"]["kernel"][3] = 0.0
  params["a_in1"]["kernel"][:, 0] = 0.0
  params["b_out1"]["kernel"][0] = 0.0
  params["g_out2"]["kernel"][5] = 1e-8  # tiny but nonzero: still active
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  per_unit = [
    np.array([np.linalg.norm(w_unit(p, w, i)) * np.linalg.norm(v_unit(p, v, i)) for i in range(n)])
    for w, v in layer_names(DENSE)
    for n in [units(p, w)]
  ]

  norms = pp.path_norm(params, groups)
  np.testing.assert_allclose(norms.total, sum(u.sum() for u in per_unit), rtol=1e-6)
  assert list(norms.per_group) == [0, 1, 2]
  for k, u in enumerate(per_unit):
    np.testing.assert_allclose(norms.per_group[k], u.sum(), rtol=1e-6)

  active = pp.active_units(params, groups)
  assert [int(active.per_group[k]) for k in range(3)] == [3, 3, 6]
  assert [int(np.sum(u > 0)) for u in per_unit] == [3, 3, 6]
  assert int(active.count) == 12
  np.testing.assert_allclose(active.fraction, 12 / 15)
  np.testing.assert_allclose([active.per_group_fraction[k] for k in range(3)], [3 / 5, 3 / 4, 1.0])

  loss, wd = 0.7, 0.03
  ungrouped = np.sum(p["c_free"]["kernel"] ** 2)  # kernels only: biases are not decayed
  expected = loss + wd * sum(u.sum() for u in per_unit) + 0.5 * wd * ungrouped
  np.testing.assert_allclose(
    pp.weight_decay_objective(loss, params, groups, wd), expected, rtol=1e-6
  )
