"""PathProx as an Optax transform: function-preserving balance, base-optimiser equivalence,
linen/NNX parity, dead units, dtypes, tracing, scan and sharding."""

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import meta
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pathprox_jax as pp

WIDTH = 32  # the hidden width (the paper's 400), divisible by the 8 fake devices
IN, OUT = ("in", "out")


class MLP(nn.Module):
  """Dense layers; ``relu[i]`` after layer i; ``groups[i]`` is (group, role) or None."""

  features: Sequence[int]
  relu: Sequence[bool]
  groups: Sequence[tuple[int, str] | None]

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for features, relu, group in zip(self.features, self.relu, self.groups, strict=True):
      x = nn.Dense(features, **(pp.group_inits(*group) if group else {}))(x)
      x = nn.relu(x) if relu else x
    return x


class ConvNet(nn.Module):
  """Two groups of two convolutions each, max-pooling between and after them, dense head."""

  @nn.compact
  def __call__(self, x):
    for group in (0, 1):
      x = nn.relu(nn.Conv(4 + group, (3, 3), **pp.group_inits(group, IN))(x))
      x = nn.relu(nn.Conv(6 - group, (3, 3), **pp.group_inits(group, OUT))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


THREE_GROUPS = ((0, IN), (0, OUT), (1, IN), (1, OUT), (2, IN), (2, OUT))
# The paper's factorised MLP: each hidden ReLU layer is followed by a linear bottleneck layer.
FACTORISED = MLP((WIDTH, 12, WIDTH, 12, WIDTH, 10), (True, False) * 2 + (True, False), THREE_GROUPS)
ALL_RELU = MLP((WIDTH, 12, WIDTH, 12, WIDTH, 10), (True,) * 5 + (False,), THREE_GROUPS)
SMALL = MLP((WIDTH, 6, 3), (True, True, False), ((0, IN), (0, OUT), None))


def init(model, x, seed=0):
  """Random float32 params (nonzero biases) and the groups, without compiling ``model.init``."""
  boxed = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  rng = np.random.default_rng(seed)

  def sample(leaf):
    scale = 0.1 if len(leaf.shape) == 1 else 1 / np.sqrt(np.prod(leaf.shape[:-1]))
    return jnp.asarray(scale * rng.standard_normal(leaf.shape), jnp.float32)

  return jax.tree.map(sample, meta.unbox(boxed)), pp.group_spec(boxed)


def sgd_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  return step


@pytest.mark.slow
@pytest.mark.parametrize(
  "model, x_shape",
  [(FACTORISED, (4, 20)), (ALL_RELU, (4, 20)), (ConvNet(), (2, 8, 8, 3))],
  ids=["factorised-mlp", "relu-mlp", "conv-maxpool"],
)
def test_balance_preserves_function_and_equalises_path_norms(model, x_shape):
  x = jax.random.normal(jax.random.key(1), x_shape)
  params, groups = init(model, x)
  # Unbalance the groups strongly (the random biases are nonzero: the balance must scale them).
  first_out = next(k for k in params if k.endswith("_1"))
  params[first_out]["kernel"] = params[first_out]["kernel"] * 7.0
  before = pp.path_norm(params, groups).per_group
  assert max(before.values()) > 2 * min(before.values())

  balanced = jax.jit(lambda p: pp.balance(p, groups))(params)
  after = np.array(list(pp.path_norm(balanced, groups).per_group.values()))
  np.testing.assert_allclose(after, after[0], rtol=1e-5)
  np.testing.assert_allclose(np.prod(after), np.prod(list(before.values())), rtol=1e-4)
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(
    apply({"params": balanced}, x), apply({"params": params}, x), rtol=1e-5, atol=1e-5
  )


@pytest.mark.slow
def test_one_chain_of_all_groups_is_balance_true_bit_for_bit():
  x = jax.random.normal(jax.random.key(1), (4, 20))
  params, groups = init(FACTORISED, x)
  params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"] * 7.0
  grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)
  results = []
  for balance in (True, ((0, 1, 2),), [[0, 1, 2]]):
    tx = pp.pathprox_sgd(0.1, 0.3, groups, momentum=0.9, balance=balance)
    stepped = jax.jit(sgd_step(tx))(params, tx.init(params), grads)
    results.append((stepped, pp.prox(params, groups, 0.05, balance=balance)))
    results[-1] += (pp.balance(params, groups, chains=balance),)
  chex.assert_trees_all_equal(results[0], results[1])
  chex.assert_trees_all_equal(results[0], results[2])


EIGHT_GROUPED = tuple((k // 2, (IN, OUT)[k % 2]) for k in range(8))
FOUR_GROUPS = MLP((WIDTH, 12) * 3 + (WIDTH, 10), (True, False) * 4, EIGHT_GROUPED)


def test_two_chains_are_balanced_each_on_its_own():
  x = jax.random.normal(jax.random.key(1), (4, 20))
  params, groups = init(FOUR_GROUPS, x)
  for layer, scale in (("Dense_1", 7.0), ("Dense_4", 0.2), ("Dense_7", 3.0)):
    params[layer]["kernel"] = params[layer]["kernel"] * scale
  before = {k: float(v) for k, v in pp.path_norm(params, groups).per_group.items()}

  balanced = jax.jit(lambda p: pp.balance(p, groups, chains=((0, 1), (2, 3))))(params)
  # The chains are independent: balancing them one after the other is the same, bit for bit.
  halves = pp.balance(pp.balance(params, groups, chains=((0, 1),)), groups, chains=((2, 3),))
  chex.assert_trees_all_equal(balanced, halves)
  # Each chain's groups reach the float64 geometric mean of that chain's path norms.
  after = pp.path_norm(balanced, groups).per_group
  for chain in ((0, 1), (2, 3)):
    mean = np.exp(np.mean(np.log([before[k] for k in chain], dtype=np.float64)))
    np.testing.assert_allclose([after[k] for k in chain], [mean, mean], rtol=1e-5)
  assert not np.isclose(float(after[1]), float(after[2]), rtol=1e-2)
  # A chain's first "in" layer is untouched: the scale stays inside the chain.
  for layer in ("Dense_0", "Dense_4"):
    chex.assert_trees_all_equal(balanced[layer], params[layer])
  apply = jax.jit(FOUR_GROUPS.apply)
  np.testing.assert_allclose(
    apply({"params": balanced}, x), apply({"params": params}, x), rtol=1e-5, atol=1e-5
  )


@pytest.mark.slow
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_ungrouped_updates_equal_base_optimiser(momentum, nesterov):
  x = jnp.ones((2, 20))
  params, groups = init(SMALL, x)
  base = optax.sgd(0.1, momentum=momentum, nesterov=nesterov)
  with_prox = optax.chain(base, pp.pathprox(0.1, 0.5, groups))
  grads = jax.tree.map(lambda p: jnp.cos(p * 3.0), params)
  base_updates, _ = base.update(grads, base.init(params), params)
  updates, _ = with_prox.update(grads, with_prox.init(params), params)
  chex.assert_trees_all_equal(updates["Dense_2"], base_updates["Dense_2"])
  assert not np.allclose(updates["Dense_0"]["kernel"], base_updates["Dense_0"]["kernel"])

  # Without weight decay and groups the whole recipe is SGD, bit for bit, over steps.
  none = jax.tree.map(lambda _: None, params)
  tx = pp.pathprox_sgd(0.1, 0.0, none, momentum=momentum, nesterov=nesterov)
  step, base_step = jax.jit(sgd_step(tx)), jax.jit(sgd_step(base))
  p, s, q, t = params, tx.init(params), params, base.init(params)
  for _ in range(3):
    p, s, _ = step(p, s, grads)
    q, t, _ = base_step(q, t, grads)
  chex.assert_trees_all_equal(p, q)


@pytest.mark.slow
def test_linen_and_nnx_models_take_the_same_step():
  class NnxMLP(nnx.Module):
    def __init__(self, rngs):
      meta_in, meta_out = pp.group_metadata(0, IN), pp.group_metadata(0, OUT)
      self.Dense_0 = nnx.Linear(
        20, WIDTH, kernel_metadata=meta_in, bias_metadata=meta_in, rngs=rngs
      )
      self.Dense_1 = nnx.Linear(
        WIDTH, 6, kernel_metadata=meta_out, bias_metadata=meta_out, rngs=rngs
      )
      self.Dense_2 = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
      return self.Dense_2(nnx.relu(self.Dense_1(nnx.relu(self.Dense_0(x)))))

  x = jax.random.normal(jax.random.key(1), (4, 20))
  y = jax.random.normal(jax.random.key(2), (4, 3))
  params, groups = init(SMALL, x)
  model = NnxMLP(nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  assert nnx.to_pure_dict(pp.group_spec(state)) == groups
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)

  def make_tx(groups):
    return pp.pathprox_sgd(0.1, 0.05, groups, momentum=0.9)

  tx = make_tx(groups)
  opt_state = tx.init(params)
  optimizer = nnx.Optimizer(model, make_tx(pp.group_spec(state)), wrt=nnx.Param)

  @jax.jit
  def linen_step(params, opt_state):
    grads = jax.grad(lambda p: jnp.mean((SMALL.apply({"params": p}, x) - y) ** 2))(params)
    return sgd_step(tx)(params, opt_state, grads)[:2]

  @nnx.jit
  def nnx_step(model, optimizer):
    optimizer.update(model, nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model))

  for _ in range(2):
    params, opt_state = linen_step(params, opt_state)
    nnx_step(model, optimizer)
  chex.assert_trees_all_close(
    nnx.to_pure_dict(nnx.state(model, nnx.Param)), params, rtol=1e-6, atol=1e-7
  )


@pytest.mark.slow
def test_dead_units_and_dead_groups_stay_finite():
  x = jnp.ones((2, 20))
  params, groups = init(FACTORISED, x)
  params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].at[:, 0].set(0.0)  # no input
  params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[1].set(0.0)  # no output
  params["Dense_2"]["kernel"] = jnp.zeros_like(params["Dense_2"]["kernel"])  # a dead group
  params["Dense_3"]["kernel"] = jnp.zeros_like(params["Dense_3"]["kernel"])

  norms = pp.path_norm(params, groups)
  assert float(norms.per_group[1]) == 0.0 and np.isfinite(norms.total)
  active = pp.active_units(params, groups)
  assert [int(active.per_group[k]) for k in range(3)] == [WIDTH - 2, 0, WIDTH]
  # A group with path norm zero has no balancing scale: the balance is skipped.
  no_balance = pp.prox(params, groups, 0.01, balance=False)
  chex.assert_trees_all_equal(pp.prox(params, groups, 0.01), no_balance)
  chex.assert_trees_all_equal(pp.balance(params, groups), params)
  chex.assert_tree_all_finite(no_balance)
  chex.assert_tree_all_finite(pp.prox(params, groups, 0.0))  # 0 / 0 in the threshold

  tx = pp.pathprox_sgd(0.1, 0.01, groups, momentum=0.9)
  step, state = jax.jit(sgd_step(tx)), tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(2):
    params, state, updates = step(params, state, zeros)
  chex.assert_tree_all_finite((params, state, updates))
  assert int(pp.active_units(params, groups).per_group[1]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_is_preserved(dtype):
  x = jnp.ones((2, 20))
  params, groups = init(SMALL, x)
  params = jax.tree.map(lambda p: p.astype(dtype), params)
  tx = pp.pathprox_sgd(0.1, 0.01, groups, momentum=0.9)
  new, _, updates = jax.jit(sgd_step(tx))(params, tx.init(params), params)
  dtypes = jax.tree.map(lambda p: p.dtype, params)
  assert jax.tree.map(lambda u: u.dtype, updates) == dtypes
  assert jax.tree.map(lambda p: p.dtype, new) == dtypes
  for metric in (pp.path_norm(new, groups).total, pp.active_units(new, groups).fraction):
    assert np.isfinite(metric)


@pytest.mark.slow
def test_no_recompilation_and_scan_equals_loop():
  x = jnp.ones((2, 20))
  params, groups = init(SMALL, x)
  tx = pp.pathprox_sgd(optax.exponential_decay(0.2, 1, 0.7), 0.3, groups, momentum=0.9)
  grads = [jax.tree.map(lambda p, i=i: jnp.sin(p + i), params) for i in range(3)]

  def step(params, state, grad):
    return sgd_step(tx)(params, state, grad)[:2]

  # Every step after the first reuses the first trace: the state's types and shapes are stable.
  jitted = jax.jit(chex.assert_max_traces(step, n=1))
  p, s = params, tx.init(params)
  for grad in grads:
    p, s = jax.block_until_ready(jitted(p, s, grad))

  stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
  scan = jax.jit(lambda carry, xs: jax.lax.scan(lambda c, g: (step(*c, g), None), carry, xs)[0])
  chex.assert_trees_all_close(
    scan((params, tx.init(params)), stacked), (p, s), rtol=1e-6, atol=1e-7
  )


@pytest.mark.slow
@pytest.mark.parametrize("sharded", [False, True], ids=["replicated", "sharded"])
def test_sharded_step_equals_single_device_step(sharded):
  mesh = jax.make_mesh((8,), ("d",))
  x = jnp.ones((2, 20))
  params, groups = init(FACTORISED, x)
  tx = pp.pathprox_sgd(0.1, 0.3, groups, momentum=0.9)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)

  def sharding(leaf):
    """Shards the hidden-unit axis (the last or second-to-last axis of width WIDTH)."""
    spec = [None] * leaf.ndim
    if sharded and leaf.ndim and WIDTH in leaf.shape[-2:]:
      spec[leaf.ndim - 1 if leaf.shape[-1] == WIDTH else leaf.ndim - 2] = "d"
    return NamedSharding(mesh, P(*spec))

  step = jax.jit(sgd_step(tx))
  expected = step(params, state, grads)
  placed = jax.tree.map(lambda a: jax.device_put(a, sharding(a)), (params, state, grads))
  if sharded:
    assert placed[0]["Dense_0"]["kernel"].sharding.spec == P(None, "d")
  got = jax.block_until_ready(step(*placed))
  chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-6)


# optax's battery for every transform: hyper-parameters injected under jit, extra arguments,
# gradient accumulation, and low-precision params checked by value.
FACTORIES = {
  "pathprox_sgd": (pp.pathprox_sgd, dict(momentum=0.9, nesterov=True, eps=1e-5)),
  "pathprox_sgd-paper-rule": (pp.pathprox_sgd, dict(momentum=0.9, threshold_rule="paper")),
  "pathprox": (pp.pathprox, dict(momentum=0.5, balance=False, eps=1e-5)),
  "pathprox_adamw": (pp.pathprox_adamw, dict(b1=0.8, nesterov=True, prox_eps=1e-5)),
  "pathprox_adamw-chains": (pp.pathprox_adamw, dict(balance=((1, 2),))),
}


@pytest.mark.parametrize("factory, kwargs", FACTORIES.values(), ids=FACTORIES.keys())
def test_inject_hyperparams_under_jit(factory, kwargs):
  x = jnp.ones((2, 20))
  params, groups = init(FACTORISED, x)
  grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)
  injected = optax.inject_hyperparams(factory, static_args=("groups",))(
    learning_rate=0.1, weight_decay=0.3, groups=groups, **kwargs
  )
  direct = factory(0.1, 0.3, groups, **kwargs)
  # A bool or a tuple of chains is static without static_args: not a hyper-parameter array.
  assert "balance" not in injected.init(params).hyperparams
  chex.clear_trace_counter()  # chex counts traces per function name, across parameters
  step = jax.jit(chex.assert_max_traces(sgd_step(injected), n=1))
  p, s = params, injected.init(params)
  q, t = params, direct.init(params)
  for _ in range(3):
    p, s, _ = step(p, s, grads)
    q, t, _ = sgd_step(direct)(q, t, grads)
  # Injected hyper-parameters are float32 arrays, not Python floats: Adam's bias correction rounds
  # differently (optax.adamw's own injected steps differ by 2e-6 here).
  chex.assert_trees_all_close(p, q, rtol=1e-5, atol=1e-5)
  # Changing an injected value reuses the compiled step and changes the result.
  s.hyperparams["weight_decay"] = jnp.full_like(s.hyperparams["weight_decay"], 3.0)
  changed, _, _ = step(p, s, grads)
  assert not np.allclose(
    changed["Dense_1"]["kernel"], sgd_step(direct)(p, t, grads)[0]["Dense_1"]["kernel"]
  )


@pytest.mark.parametrize("factory, kwargs", FACTORIES.values(), ids=FACTORIES.keys())
def test_extra_args_are_accepted(factory, kwargs):
  x = jnp.ones((2, 20))
  params, groups = init(FACTORISED, x)
  tx = factory(0.1, 0.3, groups, **kwargs)
  grads = jax.tree.map(jnp.sin, params)
  plain, _ = tx.update(grads, tx.init(params), params)
  extra, _ = tx.update(grads, tx.init(params), params, loss=jnp.ones(()), value=0.5)
  chex.assert_trees_all_equal(extra, plain)


@pytest.mark.slow
def test_multisteps_equals_one_step_on_the_mean_gradient():
  x = jnp.ones((2, 20))
  params, groups = init(FACTORISED, x)
  tx = pp.pathprox_sgd(optax.exponential_decay(0.2, 1, 0.5), 0.3, groups, momentum=0.9)
  micro = [jax.tree.map(lambda p, i=i: jnp.sin(p + i), params) for i in range(4)]
  accumulating = optax.MultiSteps(tx, every_k_schedule=2)
  update = jax.jit(accumulating.update)
  p, s = params, accumulating.init(params)
  q, t = params, tx.init(params)
  for k in range(2):
    first, second = micro[2 * k], micro[2 * k + 1]
    updates, s = update(first, s, p)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))  # accumulating
    p = optax.apply_updates(p, updates)
    updates, s = update(second, s, p)
    p = optax.apply_updates(p, updates)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, first, second)
    q, t, _ = jax.jit(sgd_step(tx))(q, t, mean)
    chex.assert_trees_all_close(p, q, rtol=1e-5, atol=1e-6)
  assert int(s.inner_opt_state[-1].count) == 2


@pytest.mark.slow
def test_bfloat16_step_equals_float32_step_rounded():
  """bf16 params: the prox runs in f32 and only its result is rounded (2 bf16 ulps of the update).

  Only grouped leaves are compared: the ungrouped ones are optax's own bf16 arithmetic (weight
  decay and SGD).
  """
  x = jnp.ones((2, 20))
  params, groups = init(FACTORISED, x)
  bf16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  f32 = jax.tree.map(lambda p: p.astype(jnp.float32), bf16)  # the same values, exactly
  grads = jax.tree.map(lambda p: (0.05 * jnp.cos(3.0 * p)).astype(jnp.bfloat16), params)
  # A power-of-two learning rate: SGD's own step -lr * g is exact in bf16 too.
  tx = pp.pathprox_sgd(0.125, 0.3, groups, balance=False)
  _, _, got = jax.jit(sgd_step(tx))(bf16, tx.init(bf16), grads)
  f32_grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
  _, _, expected = jax.jit(sgd_step(tx))(f32, tx.init(f32), f32_grads)
  for u, e, spec in zip(
    jax.tree.leaves(got),
    jax.tree.leaves(expected),
    jax.tree.leaves(groups, is_leaf=lambda s: s is None),
    strict=True,
  ):
    if spec is not None:
      assert u.dtype == jnp.bfloat16
      np.testing.assert_allclose(
        np.asarray(u, np.float32), np.asarray(e.astype(jnp.bfloat16), np.float32), rtol=2**-7
      )


def test_weight_decay_schedule_drives_decay_and_threshold():
  x = jnp.ones((2, 20))
  params, groups = init(SMALL, x)
  grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)
  schedule = optax.piecewise_constant_schedule(0.3, {1: 0.0})  # λ = 0.3 at step 0, then 0
  tx = pp.pathprox_sgd(0.1, schedule, groups)
  p, state, _ = sgd_step(tx)(params, tx.init(params), grads)
  first = pp.pathprox_sgd(0.1, 0.3, groups)
  chex.assert_trees_all_close(p, sgd_step(first)(params, first.init(params), grads)[0])
  q, _, _ = sgd_step(tx)(p, state, grads)
  second = pp.pathprox_sgd(0.1, 0.0, groups)
  chex.assert_trees_all_close(q, sgd_step(second)(p, second.init(p), grads)[0])


@pytest.mark.parametrize(
  "model, x_shape", [(FACTORISED, (4, 20)), (ConvNet(), (2, 8, 8, 3))], ids=["mlp", "conv"]
)
def test_kernel_rule_is_the_two_dims_rule_on_dense_and_conv(model, x_shape):
  """The weight-decay baseline of the MLP/VGG experiments decays exactly what it did before."""
  params, _ = init(model, jnp.ones(x_shape))
  assert pp.kernel_mask(params) == jax.tree.map(lambda p: p.ndim >= 2, params)
