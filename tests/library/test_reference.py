"""PathProx against an independent float64 NumPy reference written from the paper's maths.

The reference loops over units in plain NumPy and follows the algorithm literally: weight decay
on ungrouped kernels, SGD (with momentum), then per group the sequential layer balance, the
normalisation of each unit's input weights and the group soft-threshold of its output weights.
A unit is the slice of a kernel at one index of its unit axis (the last axis of an "in" kernel,
the second-to-last of an "out" kernel, or the GroupSpec's unit_axis: attention heads).
"""

import jax
import numpy as np
import optax
import pytest

import pathprox_jax as pp

EPS = 1e-6
G = pp.GroupSpec

# name: (kernel shape, bias dims, (group, role[, unit_axis]) or None); the bias has the kernel's
# last `bias dims` dimensions (True: one, False: no bias). Names are chosen so that the flattening
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
# A transformer block's layouts: attention heads as units (Flax's [d_model, heads, head_dim]
# value kernel, [heads, head_dim, d_model] out kernel), the query and key following the heads,
# then a ReLU FFN whose neurons are Dense units.
ATTENTION = {
  "attn_key": ((6, 3, 4), 2, (0, "follow", 1)),
  "attn_out": ((3, 4, 6), True, (0, "out", 0)),
  "attn_query": ((6, 3, 4), 2, (0, "follow", 1)),
  "attn_value": ((6, 3, 4), 2, (0, "in", 1)),
  "ffn_down": ((5, 6), True, (1, "out")),
  "ffn_up": ((6, 5), True, (1, "in")),
  "head": ((6, 2), True, None),
}
ATTENTION_NO_BIAS = {name: (shape, False, group) for name, (shape, _, group) in ATTENTION.items()}
# Four groups, for two chains of two.
DENSE4 = {**DENSE, "h_in3": ((4, 6), True, (3, "in")), "i_out3": ((6, 2), False, (3, "out"))}
NETS = {
  "dense": DENSE,
  "dense4": DENSE4,
  "conv": CONV,
  "attention": ATTENTION,
  "attention-no-bias": ATTENTION_NO_BIAS,
}
SPECS = {name: group for net in NETS.values() for name, (_, _, group) in net.items()}


def make_params(net, seed=0):
  """Random float32 params (per-layer scales differ, so the groups start unbalanced)."""
  rng = np.random.default_rng(seed)
  params = {}
  for i, (name, (shape, bias_dims, _)) in enumerate(net.items()):
    scale = 0.3 * (1 + i % 3)
    params[name] = {"kernel": (scale * rng.standard_normal(shape)).astype(np.float32)}
    if bias_dims:
      bias_shape = shape[-int(bias_dims) :]
      params[name]["bias"] = (0.1 * rng.standard_normal(bias_shape)).astype(np.float32)
  return params


def make_groups(net):
  """The spec pytree, as pathprox_jax.group_spec or attention_head_rules would build it."""
  groups = {}
  for name, (shape, bias_dims, group) in net.items():
    spec = None if group is None else G(*group)
    bias_spec = spec
    if spec is not None and spec.unit_axis is not None and spec.role != "out":
      bias_spec = G(spec.group, spec.role, spec.unit_axis - len(shape) + int(bias_dims))
    elif spec is not None:
      bias_spec = G(spec.group, spec.role)
    groups[name] = {"kernel": spec, **({"bias": bias_spec} if bias_dims else {})}
  return groups


def layer_names(net):
  """[(w layer, v layer)] per group, in group order."""
  names = {group[:2]: name for name, (_, _, group) in net.items() if group is not None}
  return [(names[(k, "in")], names[(k, "out")]) for k in sorted({k for k, _ in names})]


def unit_axis(layer, ndim):
  """The layer kernel's unit axis, non-negative: the spec's, or the Dense/Conv default."""
  group = SPECS[layer]
  axis = group[2] if len(group) > 2 else (-2 if group[1] == "out" else -1)
  return axis % ndim


def unit_slice(x, axis, i):
  """A view of unit i's slice of ``x`` on ``axis`` (0-d for a bias entry): assignable."""
  return np.moveaxis(x, axis, 0)[i, ...]


def w_unit(p, layer, i):
  kernel = p[layer]["kernel"]
  return unit_slice(kernel, unit_axis(layer, kernel.ndim), i)


def w_bias_unit(p, layer, i):
  """Unit i's slice of an "in" bias: on the kernel's unit axis counted from the end."""
  kernel, bias = p[layer]["kernel"], p[layer]["bias"]
  return unit_slice(bias, unit_axis(layer, kernel.ndim) - kernel.ndim + bias.ndim, i)


def v_unit(p, layer, i):
  kernel = p[layer]["kernel"]
  return unit_slice(kernel, unit_axis(layer, kernel.ndim), i)


def units(p, layer):
  kernel = p[layer]["kernel"]
  return kernel.shape[unit_axis(layer, kernel.ndim)]


def unit_rows(p, layer):
  """An "out" kernel as one flattened row per unit."""
  kernel = np.asarray(p[layer]["kernel"], np.float64)
  return np.moveaxis(kernel, unit_axis(layer, kernel.ndim), 0).reshape(units(p, layer), -1)


def group_path_norm(p, w_layer, v_layer):
  return sum(
    np.linalg.norm(w_unit(p, w_layer, i)) * np.linalg.norm(v_unit(p, v_layer, i))
    for i in range(units(p, w_layer))
  )


def scale_bias(p, layer, s):
  if "bias" in p[layer]:
    p[layer]["bias"] = p[layer]["bias"] * s


def ref_balance(p, chain):
  """Balances one chain of (w layer, v layer) sequentially, group after group; in place."""
  norms = [group_path_norm(p, w, v) for w, v in chain]
  if min(norms) > EPS:
    target = np.exp(np.mean(np.log(norms)))
    for k in range(len(chain) - 1):
      s = target / group_path_norm(p, *chain[k])
      p[chain[k][1]]["kernel"] = p[chain[k][1]]["kernel"] * s
      scale_bias(p, chain[k][1], s)
      scale_bias(p, chain[k + 1][0], s)
      p[chain[k + 1][1]]["kernel"] = p[chain[k + 1][1]]["kernel"] / s


def ref_prox(p, net, tau, balance, regularize_bias):
  """Balance (all groups as one chain, or each given chain), normalise w, soft-threshold v."""
  groups = layer_names(net)
  chains = [range(len(groups))] if balance is True else balance or []
  for chain in [] if regularize_bias else chains:
    ref_balance(p, [groups[k] for k in chain])
  for w_layer, v_layer in groups:
    for i in range(units(p, w_layer)):
      w_i = w_unit(p, w_layer, i)  # views: assigning to them writes into p
      has_bias = "bias" in p[w_layer]
      if regularize_bias and has_bias:
        norm = np.linalg.norm(np.append(w_i.ravel(), w_bias_unit(p, w_layer, i).ravel()))
      else:
        norm = np.linalg.norm(w_i)
      w_i[...] = w_i / max(norm, EPS)
      if has_bias:
        b_i = w_bias_unit(p, w_layer, i)
        b_i[...] = b_i / max(norm, EPS)
      v_i = v_unit(p, v_layer, i)
      v_i[...] = v_i * max(0.0, 1.0 - tau / max(np.linalg.norm(v_i), EPS))


def is_decayed(net, layer, leaf, regularize_bias):
  group = net[layer][2]
  if group is None or group[1] == "follow":  # followers are not regularised by the prox
    return leaf == "kernel" or regularize_bias
  return regularize_bias and group[1] == "out" and leaf == "bias"


def sgd_direction(d, trace, momentum, nesterov):
  """optax.sgd's step direction and new trace for one leaf (heavy ball, or Nesterov)."""
  trace = d + momentum * trace
  return (d + momentum * trace if nesterov else trace), trace


def adam_direction(d, moments, t, b1, b2, eps):
  """optax.scale_by_adam's bias-corrected direction and new moments (mu, nu) at step t (0-based)."""
  mu, nu = moments
  mu, nu = b1 * mu + (1 - b1) * d, b2 * nu + (1 - b2) * d * d
  mu_hat, nu_hat = mu / (1 - b1 ** (t + 1)), nu / (1 - b2 ** (t + 1))
  return mu_hat / (np.sqrt(nu_hat) + eps), (mu, nu)


def ref_steps(params, grads, net, schedule, wd, optimizer, threshold, balance, regularize_bias):
  """Runs a whole PathProx recipe in float64; returns params and the optimiser's state per leaf.

  ``optimizer`` is "sgd" (with ``momentum``, ``nesterov``: the decay joins the gradient) or
  "adamw" (with ``b1``, ``b2``, ``eps``: the decay is added to Adam's direction);
  ``threshold(lr)`` is the prox's tau.
  """
  name, options = optimizer
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  zeros = jax.tree.map(np.zeros_like, p)
  state = zeros if name == "sgd" else jax.tree.map(lambda z: (z, z), zeros)
  for t, g in enumerate(grads):
    lr = float(schedule(t))
    for layer, leaves in p.items():
      for leaf in leaves:
        d = np.asarray(g[layer][leaf], np.float64)
        decay = wd * leaves[leaf] if is_decayed(net, layer, leaf, regularize_bias) else 0.0
        if name == "sgd":
          direction, state[layer][leaf] = sgd_direction(d + decay, state[layer][leaf], **options)
        else:
          direction, state[layer][leaf] = adam_direction(d, state[layer][leaf], t, **options)
          direction = direction + decay
        leaves[leaf] = leaves[leaf] - lr * direction
    ref_prox(p, net, threshold(lr), balance, regularize_bias)
  return p, state


def reference_inputs(net_name):
  """Params, groups and three gradients for a net (with weak units to switch off)."""
  net = NETS[net_name]
  params, groups = make_params(net), make_groups(net)
  grads = [make_params(net, seed) for seed in (1, 2, 3)]
  if "attn_out" in params:
    # Small gradients and one weak head and neuron, so that the threshold switches units off.
    grads = jax.tree.map(lambda g: 0.1 * g, grads)
    params["attn_out"]["kernel"][0] *= 0.05
    params["ffn_down"]["kernel"][0] *= 0.05
  return net, params, groups, grads


def run_steps(tx, params, grads):
  """The jitted optax loop: final params and optimiser state."""

  @jax.jit
  def step(params, state, grad):
    updates, state = tx.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for grad in grads:
    params, state = step(params, state, grad)
  return params, state


def assert_close(actual, expected):
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), actual, expected
  )


def assert_both_threshold_branches(expected, net):
  """The prox must have switched some units off and kept others."""
  v_norms = np.concatenate(
    [np.linalg.norm(unit_rows(expected, v), axis=1) for _, v in layer_names(net)]
  )
  assert np.any(v_norms == 0) and np.any(v_norms > 0)


CASES = {
  "dense": dict(net="dense"),
  "dense-no-balance": dict(net="dense", balance=False),
  "dense-two-chains": dict(net="dense4", balance=((0, 1), (2, 3)), momentum=0.9),
  "dense-chain-of-the-last-two": dict(net="dense", balance=((1, 2),)),
  "dense-regularize-bias": dict(net="dense", regularize_bias=True),
  "dense-momentum": dict(net="dense", momentum=0.9),
  "dense-momentum-paper-rule": dict(net="dense", momentum=0.9, threshold_rule="paper"),
  "dense-nesterov-schedule": dict(net="dense", momentum=0.5, nesterov=True, schedule=True),
  "conv": dict(net="conv"),
  "conv-no-balance-momentum": dict(net="conv", balance=False, momentum=0.9),
  "conv-regularize-bias-schedule": dict(net="conv", regularize_bias=True, schedule=True),
  # Attention heads and FFN neurons of a transformer block: never balanced (residual stream).
  "attention-heads": dict(net="attention", balance=False),
  "attention-heads-nesterov": dict(net="attention", balance=False, momentum=0.9, nesterov=True),
  "attention-heads-nesterov-paper-rule": dict(
    net="attention", balance=False, momentum=0.9, nesterov=True, threshold_rule="paper"
  ),
  "attention-heads-regularize-bias": dict(net="attention", regularize_bias=True),
  "attention-heads-no-bias-schedule": dict(
    net="attention-no-bias", balance=False, momentum=0.5, schedule=True
  ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_pathprox_sgd_matches_numpy_reference(case):
  net, params, groups, grads = reference_inputs(case["net"])
  momentum, nesterov = case.get("momentum", 0.0), case.get("nesterov", False)
  balance, regularize_bias = case.get("balance", True), case.get("regularize_bias", False)
  rule = case.get("threshold_rule", "fixed_point")
  # The schedule halves the step each time: tau must follow it step by step.
  lr = optax.exponential_decay(0.4, 1, 0.5) if case.get("schedule") else 0.2
  scale = 1 / (1 - momentum) if rule == "fixed_point" else 1.0
  wd = 1.5 / scale  # tau = 1.5 lr for every rule: some units die, others live
  tx = pp.pathprox_sgd(
    lr,
    wd,
    groups,
    momentum=momentum,
    nesterov=nesterov,
    threshold_rule=rule,
    balance=balance,
    regularize_bias=regularize_bias,
  )
  jax_params, state = run_steps(tx, params, grads)

  schedule = lr if callable(lr) else (lambda _: lr)
  expected, trace = ref_steps(
    params,
    grads,
    net,
    schedule,
    wd,
    ("sgd", dict(momentum=momentum, nesterov=nesterov)),
    lambda lr: scale * wd * lr,
    balance,
    regularize_bias,
  )
  assert_close(jax_params, expected)
  assert_both_threshold_branches(expected, net)
  if momentum:
    # The trace holds the (decayed) gradients only: the prox never touches it.
    assert_close(optax.tree_utils.tree_get(state, "trace"), trace)


ADAMW_CASES = {
  "dense-schedule": dict(net="dense"),
  "dense-regularize-bias": dict(net="dense", regularize_bias=True),
  "conv-no-balance": dict(net="conv", balance=False),
  "attention-heads": dict(net="attention", balance=False),
  "attention-ffn-alone": dict(net="attention", balance=((1,),)),
}


@pytest.mark.parametrize("case", ADAMW_CASES.values(), ids=ADAMW_CASES.keys())
def test_pathprox_adamw_matches_numpy_reference(case):
  """Adam's bias-corrected moments, decoupled decay outside the groups, prox with tau = λγ_t."""
  net, params, groups, grads = reference_inputs(case["net"])
  balance, regularize_bias = case.get("balance", True), case.get("regularize_bias", False)
  lr = optax.exponential_decay(0.1, 1, 0.5)  # tau must follow the schedule step by step
  wd, adam = 2.0, dict(b1=0.8, b2=0.9, eps=1e-3)
  tx = pp.pathprox_adamw(lr, wd, groups, **adam, balance=balance, regularize_bias=regularize_bias)
  jax_params, state = run_steps(tx, params, grads)

  expected, moments = ref_steps(
    params, grads, net, lr, wd, ("adamw", adam), lambda lr: wd * lr, balance, regularize_bias
  )
  assert_close(jax_params, expected)
  assert_both_threshold_branches(expected, net)
  # Adam's moments hold the raw gradients: neither the decay nor the prox touches them.
  mu = jax.tree.map(lambda m: m[0], moments, is_leaf=lambda x: isinstance(x, tuple))
  nu = jax.tree.map(lambda m: m[1], moments, is_leaf=lambda x: isinstance(x, tuple))
  assert_close(optax.tree_utils.tree_get(state, "mu"), mu)
  assert_close(optax.tree_utils.tree_get(state, "nu"), nu)


@pytest.mark.parametrize("net", ["dense", "conv", "attention"])
def test_prox_output_step_is_exact_group_soft_threshold(net):
  """x = prox(z) minimises 1/2 ||x - z||^2 + tau ||x|| per unit: check optimality conditions."""
  params, groups = make_params(NETS[net]), make_groups(NETS[net])
  tau = 1.0
  for w_layer, v_layer in layer_names(NETS[net]):
    for i in range(units(params, w_layer)):
      w_i = w_unit(params, w_layer, i)
      w_i[...] = w_i / np.linalg.norm(w_i)
    # Spread the units' output norms on both sides of tau.
    for i, target in enumerate(np.linspace(0.2, 3.0, units(params, v_layer))):
      v_i = v_unit(params, v_layer, i)
      v_i[...] = v_i * (target / np.linalg.norm(v_i))

  new = pp.prox(params, groups, tau, balance=False)
  for w_layer, v_layer in layer_names(NETS[net]):
    np.testing.assert_allclose(new[w_layer]["kernel"], params[w_layer]["kernel"], rtol=1e-6)
    z, x = unit_rows(params, v_layer), unit_rows(new, v_layer)
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


@pytest.mark.slow
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_attention_head_metrics_and_prox_match_numpy(with_bias):
  """Per-head norms over [d_model, head_dim] ("in") and [head_dim, d_model] ("out"), by hand."""
  net = ATTENTION if with_bias else ATTENTION_NO_BIAS
  params, groups = make_params(net), make_groups(net)
  value, out = params["attn_value"], params["attn_out"]
  out["kernel"][1] = 0.0  # head 1 switched off
  value["kernel"][:, 2, :] = 0.0  # head 2 has no input weights
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  heads = p["attn_value"]["kernel"].shape[1]
  head_in = [np.linalg.norm(p["attn_value"]["kernel"][:, h, :]) for h in range(heads)]
  head_out = [np.linalg.norm(p["attn_out"]["kernel"][h, :, :]) for h in range(heads)]
  ffn = [
    np.linalg.norm(p["ffn_up"]["kernel"][:, i]) * np.linalg.norm(p["ffn_down"]["kernel"][i])
    for i in range(5)
  ]
  heads_path = np.multiply(head_in, head_out)

  norms = pp.path_norm(params, groups)
  np.testing.assert_allclose(norms.per_group[0], heads_path.sum(), rtol=1e-6)
  np.testing.assert_allclose(norms.per_group[1], np.sum(ffn), rtol=1e-6)
  active = pp.active_units(params, groups)
  assert int(active.per_group[0]) == 1 and int(active.per_group[1]) == 5  # heads, neurons
  loss, wd = 0.7, 0.03
  # Kernels outside the prox: the head classifier and the query/key (followers).
  free = sum(np.sum(p[name]["kernel"] ** 2) for name in ("head", "attn_query", "attn_key"))
  np.testing.assert_allclose(
    pp.weight_decay_objective(loss, params, groups, wd),
    loss + wd * (heads_path.sum() + np.sum(ffn)) + 0.5 * wd * free,
    rtol=1e-6,
  )

  tau = 0.8
  new = pp.prox(params, groups, tau, balance=False)
  for h in range(heads):
    scale = 1 / max(head_in[h], EPS)
    np.testing.assert_allclose(
      new["attn_value"]["kernel"][:, h, :], p["attn_value"]["kernel"][:, h, :] * scale, rtol=1e-5
    )
    if with_bias:
      np.testing.assert_allclose(
        new["attn_value"]["bias"][h], p["attn_value"]["bias"][h] * scale, rtol=1e-5
      )
    shrink = max(0.0, 1 - tau / max(head_out[h], EPS))
    np.testing.assert_allclose(
      new["attn_out"]["kernel"][h], p["attn_out"]["kernel"][h] * shrink, rtol=1e-5, atol=1e-7
    )
  for name in ("attn_query", "attn_key", "head"):  # untouched by the prox
    jax.tree.map(np.testing.assert_array_equal, new[name], params[name])
  if with_bias:
    np.testing.assert_array_equal(new["attn_out"]["bias"], params["attn_out"]["bias"])


def test_balance_is_refused_for_attention_heads():
  params, groups = make_params(ATTENTION), make_groups(ATTENTION)
  message = "group 0 has followers .* pass balance=False"
  with pytest.raises(ValueError, match=message):
    pp.pathprox_sgd(0.1, 1e-3, groups).init(params)
  with pytest.raises(ValueError, match=message):
    pp.prox(params, groups, 0.1)
  with pytest.raises(ValueError, match=message):
    pp.balance(params, groups)
  # Heads without followers are refused too: their units are not on a Dense/Conv axis.
  no_followers = {**groups, "attn_query": {"kernel": None, "bias": None}}
  no_followers["attn_key"] = {"kernel": None, "bias": None}
  with pytest.raises(ValueError, match="group 0 has units on a non-Dense/Conv axis"):
    pp.prox(params, no_followers, 0.1)
  pp.pathprox_sgd(0.1, 1e-3, groups, balance=False).init(params)  # accepted without balance
  pp.pathprox_sgd(0.1, 1e-3, groups, regularize_bias=True).init(params)  # never balances


@pytest.mark.parametrize(
  "chains, message",
  [
    (((0, 1),), "group 0 has followers"),  # the heads
    (
      ((1, 2),),
      r"chain \(1, 2\) names group 2, which is not a group of the spec \(groups \[0, 1\]\)",
    ),
    (((1,), (0, 1)), "group 1 is in more than one chain"),
    ((1, 0), "balance must be True, False or a sequence of chains"),
  ],
  ids=["head-group", "unknown-id", "group-in-two-chains", "not-chains"],
)
def test_bad_balance_chains_raise_one_line(chains, message):
  params, groups = make_params(ATTENTION), make_groups(ATTENTION)
  for call in (
    lambda: pp.pathprox_sgd(0.1, 1e-3, groups, balance=chains).init(params),
    lambda: pp.pathprox_adamw(0.1, 1e-3, groups, balance=chains).init(params),
    lambda: pp.prox(params, groups, 0.1, balance=chains),
    lambda: pp.balance(params, groups, chains=chains),
  ):
    with pytest.raises(ValueError, match=message) as error:
      call()
    assert "\n" not in str(error.value)
