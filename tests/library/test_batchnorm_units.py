"""BatchNorm channels as PathProx units: the prox against a float64 NumPy reference, compaction.

Channel ``i`` of conv → BatchNorm → ReLU computes relu(γ_i â_i + β_i): its "in" weights are
γ_i (its "in" bias β_i), the conv before it follows (sliced, never normalised) and the next
layer's input channel ``i`` is its "out" weights v_i. The reference below loops over units in
NumPy and follows the algorithm literally: ordinary weight decay on the ungrouped and "follow"
kernels, SGD, the sequential layer balance, the normalisation of (γ_i, β_i) and the group
soft-threshold of v_i.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pathprox_jax as pp

EPS = 1e-6
C_IN, SIDE, WIDTHS = 3, 5, (6, 4)


class Block(nn.Module):
  """conv_a → bn_a → ReLU → conv_b: group 0's units are bn_a's channels; then ``second``.

  ``second="conv"`` adds a Conv group 1 (conv_c "in", conv_d "out") after a ReLU, the chain
  (BatchNorm group, Conv group); ``second="bn"`` adds a BatchNorm group 1 (conv_c follows,
  bn_c "in", conv_d "out").
  """

  widths: tuple[int, int] = WIDTHS
  second: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.widths[0], (3, 3), name="conv_a", **pp.group_inits(0, "follow"))(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn_a", **pp.batch_norm_inits(0))(x)
    x = nn.Conv(5, (3, 3), name="conv_b", **pp.group_inits(0, "out"))(nn.relu(x))
    if self.second is None:
      return x
    role = "in" if self.second == "conv" else "follow"
    x = nn.Conv(self.widths[1], (3, 3), name="conv_c", **pp.group_inits(1, role))(nn.relu(x))
    if self.second == "bn":
      x = nn.BatchNorm(use_running_average=not train, name="bn_c", **pp.batch_norm_inits(1))(x)
    return nn.Conv(3, (3, 3), name="conv_d", **pp.group_inits(1, "out"))(nn.relu(x))


# Each group: (its "in" module, the "in" weights' name in it, its "out" module).
UNITS = {
  None: [("bn_a", "scale", "conv_b")],
  "conv": [("bn_a", "scale", "conv_b"), ("conv_c", "kernel", "conv_d")],
  "bn": [("bn_a", "scale", "conv_b"), ("bn_c", "scale", "conv_d")],
}
X = jax.random.normal(jax.random.key(1), (4, SIDE, SIDE, C_IN))


def make_variables(second=None, seed=0):
  """The model, random variables (γ of both signs, β, running statistics) and the params' spec."""
  model = Block(second=second)
  boxed = model.init(jax.random.key(seed), X, train=False)
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(
    lambda x: jnp.asarray(rng.uniform(0.3, 1.5, x.shape) * rng.choice([-1, 1], x.shape), x.dtype),
    nn.meta.unbox(boxed),
  )
  variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])  # var > 0
  conv_b = variables["params"]["conv_b"]  # units 0 and 3 weak: the soft-threshold kills them
  conv_b["kernel"] = conv_b["kernel"].at[:, :, (0, 3)].multiply(0.05)
  return model, variables, pp.group_spec(boxed["params"])


def as_numpy(params):
  return {
    m: {k: np.asarray(v, np.float64) for k, v in layer.items()} for m, layer in params.items()
  }


def unit_slices(p, second):
  """Per group, per unit: (in weights, in bias, out weights) views into ``p``."""
  groups = []
  for module, name, out in UNITS[second]:
    units = []
    for i in range(p[module][name].shape[-1]):
      units.append(
        (p[module][name][..., i], p[module]["bias"][i : i + 1], p[out]["kernel"][..., i, :])
      )
    groups.append(units)
  return groups


def reference_prox(p, second, tau, *, regularize_bias, balance):
  """The prox in float64 NumPy, unit by unit, in place on ``p`` (a dict of arrays)."""
  groups = unit_slices(p, second)
  if balance and not regularize_bias and len(groups) > 1:
    norms = [sum(np.linalg.norm(w) * np.linalg.norm(v) for w, _, v in units) for units in groups]
    target = np.prod(norms) ** (1 / len(norms))
    for k in range(
      len(groups) - 1
    ):  # scale group k's outputs by s and undo it after group k + 1's units
      s = target / sum(np.linalg.norm(w) * np.linalg.norm(v) for w, _, v in groups[k])
      out, next_in = UNITS[second][k][2], UNITS[second][k + 1][0]
      p[out]["kernel"] *= s
      p[out]["bias"] *= s
      p[next_in]["bias"] *= s
      p[UNITS[second][k + 1][2]]["kernel"] /= s
  for units in groups:
    for w, a, v in units:
      norm = np.sqrt(np.sum(w * w) + (np.sum(a * a) if regularize_bias else 0.0))
      w /= max(norm, EPS)
      a /= max(norm, EPS)
      v_norm = np.linalg.norm(v)
      v *= 0.0 if v_norm <= tau else 1 - tau / v_norm
  return p


def reference_sgd_step(params, grads, second, lr, wd, *, regularize_bias, balance):
  """pathprox_sgd's step (no momentum) in float64 NumPy."""
  p, g = as_numpy(params), as_numpy(grads)
  grouped_in = {module for module, _, _ in UNITS[second]}
  outs = {out for _, _, out in UNITS[second]}
  for module in p:
    decayed = {"kernel"} if module not in grouped_in | outs else set()
    if regularize_bias and module not in grouped_in:
      decayed.add("bias")  # follow and ungrouped biases, and the "out" biases
    for name in p[module]:
      step = g[module][name] + (wd * p[module][name] if name in decayed else 0.0)
      p[module][name] = p[module][name] - lr * step
  return reference_prox(p, second, lr * wd, regularize_bias=regularize_bias, balance=balance)


def input_channel_norms(kernel):
  """A conv kernel's norm per input channel: the "out" weights' norm of each unit."""
  return np.sqrt(np.sum(np.square(np.asarray(kernel, np.float64)), axis=(0, 1, 3)))


def assert_close(actual, expected):
  chex.assert_trees_all_close(as_numpy(actual), expected, rtol=2e-5, atol=2e-6)


@pytest.mark.slow
@pytest.mark.parametrize("regularize_bias", [False, True])
def test_prox_matches_reference(regularize_bias):
  _, variables, groups = make_variables()
  params = variables["params"]
  new = jax.jit(lambda p: pp.prox(p, groups, 0.9, regularize_bias=regularize_bias))(params)
  assert_close(
    new, reference_prox(as_numpy(params), None, 0.9, regularize_bias=regularize_bias, balance=True)
  )
  # The conv before the BatchNorm follows: untouched by the prox, γ normalised to |γ_i| = 1.
  chex.assert_trees_all_equal(new["conv_a"], params["conv_a"])
  if not regularize_bias:
    np.testing.assert_allclose(new["bn_a"]["scale"], np.sign(params["bn_a"]["scale"]), rtol=1e-6)
  # Some units die, some live: the test sees both branches of the soft-threshold.
  v_norms = input_channel_norms(np.asarray(new["conv_b"]["kernel"]))
  assert 0 < np.sum(v_norms == 0) < WIDTHS[0]


@pytest.mark.slow
@pytest.mark.parametrize(
  ("second", "regularize_bias"), [("conv", False), ("conv", True), ("bn", False)]
)
def test_pathprox_sgd_matches_reference(second, regularize_bias):
  # ("conv", False) balances the chain (BatchNorm group, Conv group); balance=True cuts the
  # chain before a BatchNorm group, so the two BatchNorm groups of "bn" are not balanced.
  model, variables, groups = make_variables(second)
  params = variables["params"]
  balance = second == "conv"
  grads = jax.tree.map(lambda x: 0.3 * jnp.ones_like(x) * jnp.sign(x), params)
  tx = pp.pathprox_sgd(0.5, 0.8, groups, regularize_bias=regularize_bias)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  expected = reference_sgd_step(
    params, grads, second, 0.5, 0.8, regularize_bias=regularize_bias, balance=balance
  )
  assert_close(optax.apply_updates(params, updates), expected)


@pytest.mark.slow
def test_balance_passes_from_a_batchnorm_group_and_keeps_the_function():
  model, variables, groups = make_variables("conv")
  balanced = pp.balance(variables["params"], groups)
  norms = pp.path_norm(balanced, groups).per_group
  np.testing.assert_allclose(float(norms[0]), float(norms[1]), rtol=1e-5)
  assert not np.isclose(
    *[float(x) for x in pp.path_norm(variables["params"], groups).per_group.values()]
  )
  after = {**variables, "params": balanced}
  for train in (False, True):
    before_out = model.apply(variables, X, train=train, mutable=["batch_stats"])[0]
    after_out = model.apply(after, X, train=train, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(after_out, before_out, rtol=1e-4, atol=1e-4)


def test_balance_cuts_chains_before_batchnorm_groups():
  _, variables, groups = make_variables("bn")
  params = variables["params"]
  chex.assert_trees_all_equal(pp.balance(params, groups), params)
  with pytest.raises(ValueError, match="BatchNorm group after group 0"):
    pp.balance(params, groups, chains=((0, 1),))
  with pytest.raises(ValueError, match="BatchNorm group after group 0"):
    pp.pathprox_sgd(0.1, 0.1, groups, balance=((0, 1),)).init(params)


def test_annotations_and_decay():
  boxed = Block().init(jax.random.key(0), X, train=False)
  groups = pp.group_spec(boxed)
  G = pp.GroupSpec
  assert groups["params"]["bn_a"] == {"scale": G(0, "in"), "bias": G(0, "in")}
  assert groups["params"]["conv_a"] == {"kernel": G(0, "follow"), "bias": G(0, "follow")}
  assert pp.unit_counts(nn.meta.unbox(boxed["params"]), groups["params"]) == {0: WIDTHS[0]}
  decayed = pp.decayed_mask(nn.meta.unbox(boxed["params"]), groups["params"])
  assert decayed["conv_a"]["kernel"] and not decayed["bn_a"]["scale"]
  assert not decayed["conv_b"]["kernel"]
  wrong = {**groups["params"], "bn_a": {"scale": G(0, "out"), "bias": G(0, "out")}}
  with pytest.raises(ValueError, match="BatchNorm scale with role 'out'"):
    pp.unit_counts(nn.meta.unbox(boxed["params"]), wrong)


def test_metrics_on_batchnorm_units():
  _, variables, groups = make_variables()
  params = variables["params"]
  gamma, beta = np.asarray(params["bn_a"]["scale"]), np.asarray(params["bn_a"]["bias"])
  v = input_channel_norms(np.asarray(params["conv_b"]["kernel"]))
  np.testing.assert_allclose(pp.unit_path_norms(params, groups)[0], np.abs(gamma) * v, rtol=1e-6)
  decayed = np.sum(np.asarray(params["conv_a"]["kernel"]) ** 2)
  for regularize_bias, inputs in ((False, np.abs(gamma)), (True, np.hypot(gamma, beta))):
    bias_sq = np.sum(np.asarray(params["conv_a"]["bias"]) ** 2) + np.sum(
      np.asarray(params["conv_b"]["bias"]) ** 2
    )
    squared = decayed + (bias_sq if regularize_bias else 0.0)
    objective = pp.weight_decay_objective(1.0, params, groups, 0.1, regularize_bias=regularize_bias)
    np.testing.assert_allclose(
      objective, 1.0 + 0.1 * np.sum(inputs * v) + 0.05 * squared, rtol=1e-5
    )
  pruned = {
    **params,
    "conv_b": {**params["conv_b"], "kernel": params["conv_b"]["kernel"].at[:, :, 2].set(0)},
  }
  assert int(pp.active_units(pruned, groups).count) == WIDTHS[0] - 1
  # A unit's cost: its share of conv_a's and conv_b's products, per example.
  costs = pp.unit_costs(
    lambda p, x: Block().apply({**variables, "params": p}, x, train=False), params, X, groups=groups
  )
  assert costs == {0: pytest.approx(2 * SIDE * SIDE * 9 * (C_IN + 5))}


def switch_off(variables, units):
  """The variables with the given units of group 0 off: their rows of conv_b zero."""
  params = variables["params"]
  kernel = params["conv_b"]["kernel"].at[:, :, list(units)].set(0.0)
  return {**variables, "params": {**params, "conv_b": {**params["conv_b"], "kernel": kernel}}}


@pytest.mark.parametrize("spec_of", ["params", "variables"])
def test_compact_whole_variables(spec_of):
  model, variables, params_groups = make_variables()
  variables = switch_off(variables, (1, 4))
  groups = params_groups
  if spec_of == "variables":  # the spec of the whole variables works too
    groups = pp.group_spec(Block().init(jax.random.key(0), X, train=False))
  smaller, kept = pp.compact(variables, groups)
  assert kept[0].indices.tolist() == [0, 2, 3, 5]
  p, stats = smaller["params"], smaller["batch_stats"]
  assert p["conv_a"]["kernel"].shape == (3, 3, C_IN, 4) and p["conv_a"]["bias"].shape == (4,)
  assert {k: x.shape for k, x in p["bn_a"].items()} == {"scale": (4,), "bias": (4,)}
  assert {k: x.shape for k, x in stats["bn_a"].items()} == {"mean": (4,), "var": (4,)}
  assert p["conv_b"]["kernel"].shape == (3, 3, 4, 5)
  np.testing.assert_array_equal(  # the conv before the BatchNorm follows its channels
    p["conv_a"]["kernel"], variables["params"]["conv_a"]["kernel"][..., kept[0].indices]
  )
  np.testing.assert_array_equal(
    stats["bn_a"]["var"], variables["batch_stats"]["bn_a"]["var"][kept[0].indices]
  )
  narrow = Block(widths=(4, WIDTHS[1]))
  np.testing.assert_allclose(
    narrow.apply(smaller, X, train=False),
    model.apply(variables, X, train=False),
    rtol=1e-5,
    atol=1e-5,
  )
  out, updated = model.apply(variables, X, train=True, mutable=["batch_stats"])
  narrow_out, narrow_updated = narrow.apply(smaller, X, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(narrow_out, out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    narrow_updated["batch_stats"]["bn_a"]["mean"],
    updated["batch_stats"]["bn_a"]["mean"][kept[0].indices],
    rtol=1e-6,
  )
  # The params-only call is unchanged: it returns the params alone.
  params_only, _ = pp.compact(variables["params"], params_groups)
  chex.assert_trees_all_equal(params_only, smaller["params"])


class NnxBlock(nnx.Module):
  """conv_a → bn_a → ReLU → conv_b in NNX, annotated with group_metadata."""

  def __init__(self, width, rngs):
    follow, unit_in, out = (pp.group_metadata(0, role) for role in ("follow", "in", "out"))
    self.conv_a = nnx.Conv(
      C_IN, width, (3, 3), kernel_metadata=follow, bias_metadata=follow, rngs=rngs
    )
    self.bn_a = nnx.BatchNorm(width, scale_metadata=unit_in, bias_metadata=unit_in, rngs=rngs)
    self.conv_b = nnx.Conv(width, 5, (3, 3), kernel_metadata=out, bias_metadata=out, rngs=rngs)

  def __call__(self, x):
    return self.conv_b(nnx.relu(self.bn_a(self.conv_a(x))))


@pytest.mark.slow
def test_nnx_optimizer_step_and_compact():
  _, variables, _ = make_variables()
  model = NnxBlock(WIDTHS[0], nnx.Rngs(0))
  params, stats = nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat)
  nnx.replace_by_pure_dict(params, variables["params"])
  nnx.replace_by_pure_dict(stats, variables["batch_stats"])
  nnx.update(model, params, stats)
  groups = pp.group_spec(nnx.state(model, nnx.Param))  # built eagerly, outside any trace
  with pytest.raises(ValueError, match="bn_a.*mean.* is beside the BatchNorm scale"):
    pp.prox(nnx.state(model), pp.group_spec(nnx.state(model)), 0.1)  # Params and BatchStats
  optimizer = nnx.Optimizer(model, pp.pathprox_sgd(0.5, 0.8, groups), wrt=nnx.Param)
  start = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  loss = lambda m: 1e-3 * jnp.mean(m(X) ** 2)  # noqa: E731

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(loss)(model)
    optimizer.update(model, grads)
    return grads

  grads = nnx.to_pure_dict(step(model, optimizer))
  expected = reference_sgd_step(start, grads, None, 0.5, 0.8, regularize_bias=False, balance=True)
  assert_close(nnx.to_pure_dict(nnx.state(model, nnx.Param)), expected)

  model.eval()  # the running statistics
  off = np.flatnonzero(input_channel_norms(expected["conv_b"]["kernel"]) == 0)
  assert 0 < len(off) < WIDTHS[0]
  smaller, kept = pp.compact(
    {"params": nnx.state(model, nnx.Param), "batch_stats": nnx.state(model, nnx.BatchStat)}, groups
  )
  narrow = NnxBlock(kept[0].width, nnx.Rngs(1))
  nnx.update(narrow, smaller["params"], smaller["batch_stats"])
  narrow.eval()
  assert narrow.bn_a.mean.get_value().shape == (WIDTHS[0] - len(off),)
  np.testing.assert_allclose(narrow(X), model(X), rtol=1e-5, atol=1e-5)
