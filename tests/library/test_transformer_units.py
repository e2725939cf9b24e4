"""Transformer units: attention heads and FFN neurons attached by path rules (linen and NNX),
trained by PathProx without balance, and compacted with equal outputs."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import meta

import pathprox_jax as pp

G = pp.GroupSpec
D_MODEL, HEADS, HEAD_DIM, FFN = 8, 4, 3, 12


class Block(nn.Module):
  """A pre-LayerNorm transformer block with Flax's own attention and a ReLU FFN."""

  heads: int = HEADS
  ffn: int = FFN

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(self.heads, qkv_features=self.heads * HEAD_DIM)(h, h)
    h = nn.relu(nn.Dense(self.ffn, name="up")(nn.LayerNorm()(x)))
    return x + nn.Dense(D_MODEL, name="down")(h)


class Transformer(nn.Module):
  """Two blocks (widths per block) and a linear head annotated at init (group 4)."""

  heads: tuple[int, ...] = (HEADS, HEADS)
  ffn: tuple[int, ...] = (FFN, FFN)
  readout: int = 6

  @nn.compact
  def __call__(self, x):
    for heads, ffn in zip(self.heads, self.ffn, strict=True):
      x = Block(heads, ffn)(x)
    x = nn.relu(nn.Dense(self.readout, **pp.group_inits(4, "in"))(x.mean(axis=1)))
    return nn.Dense(2, **pp.group_inits(4, "out"))(x)


def block_group(offset):
  """Block b's heads are group 2b, its FFN neurons group 2b + 1."""
  return lambda match: 2 * int(match[1]) + offset


RULES = [
  *pp.attention_head_rules(r"Block_(\d+)/MultiHeadDotProductAttention_0", block_group(0)),
  (r"Block_(\d+)/up/(kernel|bias)", lambda m: G(block_group(1)(m), "in")),
  (r"Block_(\d+)/down/(kernel|bias)", lambda m: G(block_group(1)(m), "out")),
]
X = jax.random.normal(jax.random.key(1), (5, 7, D_MODEL))


def linen_model_and_groups(model=None):
  model = model or Transformer()
  abstract = jax.eval_shape(model.init, jax.random.key(0), X)["params"]
  groups = pp.group_spec_from_paths(abstract, RULES, base=pp.group_spec(abstract))
  return abstract, groups


@pytest.mark.slow
def test_attention_rules_give_the_head_layout():
  abstract, groups = linen_model_and_groups()
  attn = groups["Block_1"]["MultiHeadDotProductAttention_0"]
  assert attn == {
    "value": {"kernel": G(2, "in", 1), "bias": G(2, "in", 0)},
    "out": {"kernel": G(2, "out", 0), "bias": G(2, "out")},
    "query": {"kernel": G(2, "follow", 1), "bias": G(2, "follow", 0)},
    "key": {"kernel": G(2, "follow", 1), "bias": G(2, "follow", 0)},
  }
  assert groups["Block_0"]["up"] == {"kernel": G(1, "in"), "bias": G(1, "in")}
  assert groups["Block_0"]["LayerNorm_0"] == {"scale": None, "bias": None}
  assert groups["Dense_0"]["kernel"] == G(4, "in")  # from base: annotated at init
  params = meta.unbox(abstract)
  shapes = params["Block_0"]["MultiHeadDotProductAttention_0"]
  assert shapes["value"]["kernel"].shape == (D_MODEL, HEADS, HEAD_DIM)
  assert shapes["out"]["kernel"].shape == (HEADS, HEAD_DIM, D_MODEL)
  ones = jax.tree.map(lambda p: jnp.ones(p.shape, p.dtype), params)
  active = pp.active_units(ones, groups)
  assert {g: int(n) for g, n in active.per_group.items()} == {
    0: HEADS,
    1: FFN,
    2: HEADS,
    3: FFN,
    4: 6,
  }


def test_group_spec_from_paths_errors():
  abstract, _ = linen_model_and_groups()
  base = pp.group_spec(abstract)
  clash = [(r"Dense_0/kernel", G(0, "in"))]
  with pytest.raises(ValueError, match=r"Dense_0/kernel has GroupSpec\(group=4, role='in'\)"):
    pp.group_spec_from_paths(abstract, clash, base=base)
  with pytest.raises(ValueError, match=r"no rule matched any parameter path.*Block_0/"):
    pp.group_spec_from_paths(abstract, [(r"Block_0/attention/value/kernel", G(0, "in", 1))])
  unboxed = meta.unbox(abstract)
  with pytest.raises(ValueError, match="found no PathProx group annotation.*boxed params"):
    pp.group_spec(unboxed)
  # A callable returning None gives no spec; the first matching rule wins.
  rules = [(r".*/up/kernel", lambda m: None), (r".*/(up|down)/(kernel|bias)", G(0, "in"))]
  spec = pp.group_spec_from_paths(unboxed, rules)
  assert spec["Block_0"]["up"] == {"kernel": None, "bias": G(0, "in")}


def test_kernel_rule():
  abstract, _ = linen_model_and_groups()
  mask = pp.kernel_mask(meta.unbox(abstract))
  attn = mask["Block_0"]["MultiHeadDotProductAttention_0"]
  assert attn["value"] == {"kernel": True, "bias": False}  # a [heads, head_dim] bias
  assert mask["Block_0"]["LayerNorm_0"] == {"scale": False, "bias": False}
  assert mask["Dense_0"] == {"kernel": True, "bias": False}
  assert pp.is_kernel((jax.tree_util.DictKey("embedding"),), jnp.ones((3, 2)))
  assert not pp.is_kernel((), jnp.ones(3))


def test_balance_is_refused():
  abstract, groups = linen_model_and_groups()
  params = jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), meta.unbox(abstract))
  with pytest.raises(ValueError, match="group 0 has followers .* pass balance=False"):
    pp.pathprox_sgd(0.1, 1e-2, groups).init(params)


@pytest.mark.slow  # trains 2 steps of a transformer
def test_training_runs_without_balance():
  _, groups = linen_model_and_groups()
  params = meta.unbox(jax.jit(Transformer().init)(jax.random.key(0), X)["params"])
  tx = pp.pathprox_sgd(0.1, 1e-2, groups, momentum=0.9, balance=False)
  y = jnp.arange(5) % 2

  @jax.jit
  def step(params, state):
    def loss(p):
      logits = Transformer().apply({"params": p}, X)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(2):
    params, state = step(params, state)
  chex.assert_tree_all_finite(params)
  value = params["Block_0"]["MultiHeadDotProductAttention_0"]["value"]["kernel"]
  np.testing.assert_allclose(jnp.linalg.norm(value, axis=(0, 2)), 1.0, rtol=1e-5)  # per head


class NNXBlock(nnx.Module):
  def __init__(self, heads, ffn, rngs):
    self.norm1 = nnx.LayerNorm(D_MODEL, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      heads, D_MODEL, qkv_features=heads * HEAD_DIM, decode=False, rngs=rngs
    )
    self.norm2 = nnx.LayerNorm(D_MODEL, rngs=rngs)
    self.up = nnx.Linear(D_MODEL, ffn, rngs=rngs)
    self.down = nnx.Linear(ffn, D_MODEL, rngs=rngs)

  def __call__(self, x):
    h = self.norm1(x)
    x = x + self.attn(h)
    return x + self.down(nnx.relu(self.up(self.norm2(x))))


class NNXTransformer(nnx.Module):
  def __init__(self, heads, ffn, rngs):
    self.blocks = nnx.List([NNXBlock(h, f, rngs) for h, f in zip(heads, ffn, strict=True)])
    self.head = nnx.Linear(D_MODEL, 2, rngs=rngs)

  def __call__(self, x):
    for block in self.blocks:
      x = block(x)
    return self.head(x.mean(axis=1))


NNX_RULES = [
  *pp.attention_head_rules(r"blocks/(\d+)/attn", block_group(0)),
  (r"blocks/(\d+)/up/(kernel|bias)", lambda m: G(block_group(1)(m), "in")),
  (r"blocks/(\d+)/down/(kernel|bias)", lambda m: G(block_group(1)(m), "out")),
]


@pytest.mark.slow
def test_nnx_attention_rules_and_optimizer():
  model = NNXTransformer((HEADS, HEADS), (FFN, FFN), nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  groups = pp.group_spec_from_paths(state, NNX_RULES)
  assert nnx.to_pure_dict(groups)["blocks"][1]["attn"]["out"]["kernel"] == G(2, "out", 0)
  optimizer = nnx.Optimizer(model, pp.pathprox_sgd(0.1, 1e-2, groups, balance=False), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(X) ** 2))(model))

  step(model, optimizer)
  kernel = model.blocks[0].attn.value.kernel.get_value()
  np.testing.assert_allclose(jnp.linalg.norm(kernel, axis=(0, 2)), 1.0, rtol=1e-5)
  assert int(pp.active_units(nnx.state(model, nnx.Param), groups).per_group[1]) == FFN


def kill_units(params, dead_heads, dead_neurons):
  """Zeroes block b's out-projection slices ``dead_heads[b]`` and down rows ``dead_neurons[b]``."""
  params = jax.tree.map(lambda p: p, params)  # a copy of the containers
  for b, (heads, neurons) in enumerate(zip(dead_heads, dead_neurons, strict=True)):
    block = params[f"Block_{b}"] if f"Block_{b}" in params else params["blocks"][b]
    attn = block.get("MultiHeadDotProductAttention_0", block.get("attn"))
    attn["out"]["kernel"] = attn["out"]["kernel"].at[np.array(heads, int)].set(0.0)
    block["down"]["kernel"] = block["down"]["kernel"].at[np.array(neurons, int)].set(0.0)
  return params


DEAD_HEADS, DEAD_NEURONS = ([1, 3], [0]), ([0, 5, 11], [])


@pytest.mark.slow
def test_compact_removes_dead_heads_and_neurons_linen():
  model = Transformer()
  params = meta.unbox(jax.jit(model.init)(jax.random.key(0), X)["params"])
  _, groups = linen_model_and_groups()
  params = kill_units(params, DEAD_HEADS, DEAD_NEURONS)
  smaller, kept = pp.compact(params, groups)
  assert {g: k.indices.tolist() for g, k in kept.items() if g < 4} == {
    0: [0, 2],
    1: [i for i in range(FFN) if i not in DEAD_NEURONS[0]],
    2: [1, 2, 3],
    3: list(range(FFN)),
  }
  attn = smaller["Block_0"]["MultiHeadDotProductAttention_0"]
  for name in ("query", "key", "value"):  # the dead heads' slices are gone, q and k included
    assert attn[name]["kernel"].shape == (D_MODEL, 2, HEAD_DIM)
    assert attn[name]["bias"].shape == (2, HEAD_DIM)
  assert attn["out"]["kernel"].shape == (2, HEAD_DIM, D_MODEL)
  small = Transformer(heads=(kept[0].width, kept[2].width), ffn=(kept[1].width, kept[3].width))
  small_abstract, small_groups = linen_model_and_groups(small)
  assert small_groups == groups
  assert jax.tree.map(lambda p: p.shape, meta.unbox(small_abstract)) == jax.tree.map(
    lambda p: p.shape, smaller
  )
  np.testing.assert_allclose(
    jax.jit(small.apply)({"params": smaller}, X),
    jax.jit(model.apply)({"params": params}, X),
    atol=1e-5,
  )


@pytest.mark.slow
def test_compact_removes_dead_heads_and_neurons_nnx():
  model = NNXTransformer((HEADS, HEADS), (FFN, FFN), nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  groups = pp.group_spec_from_paths(state, NNX_RULES)
  dead = kill_units(nnx.to_pure_dict(state), DEAD_HEADS, DEAD_NEURONS)
  nnx.replace_by_pure_dict(state, dead)
  nnx.update(model, state)
  smaller, kept = pp.compact(state, groups)
  small = NNXTransformer(
    (kept[0].width, kept[2].width), (kept[1].width, kept[3].width), nnx.Rngs(1)
  )
  nnx.update(small, smaller)
  assert small.blocks[0].attn.num_heads == 2
  apply = nnx.jit(lambda m: m(X))
  np.testing.assert_allclose(apply(small), apply(model), atol=1e-5)


class SwiGLU(nn.Module):
  """x -> (silu(x W_gate) * (x W_up)) W_down: the up column and down row form a unit."""

  hidden: int = FFN

  @nn.compact
  def __call__(self, x):
    gate = nn.Dense(
      self.hidden,
      use_bias=False,
      kernel_init=pp.with_group(nn.initializers.lecun_normal(), 0, "follow"),
    )(x)
    up = nn.Dense(self.hidden, **pp.group_inits(0, "in"))(x)
    return nn.Dense(D_MODEL, **pp.group_inits(0, "out"))(nn.silu(gate) * up)


@pytest.mark.slow
def test_swiglu_neuron_is_a_unit_and_its_gate_follows():
  model = SwiGLU()
  boxed = jax.jit(model.init)(jax.random.key(0), X)["params"]
  params, groups = meta.unbox(boxed), pp.group_spec(boxed)
  # Normalising the up columns (the prox's first step) rescales each neuron's output exactly.
  x = X[0]
  normalised = jax.jit(lambda p: pp.prox(p, groups, 0.0, balance=False))(params)
  scale = jnp.linalg.norm(params["Dense_1"]["kernel"], axis=0)

  def hidden(p):
    """The FFN's hidden activations silu(x W_gate) * (x W_up + b_up)."""
    return nn.silu(x @ p["Dense_0"]["kernel"]) * (x @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])

  np.testing.assert_allclose(hidden(normalised) * scale, hidden(params), rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_equal(normalised["Dense_0"], params["Dense_0"])  # the gate: untouched
  # The gate gets ordinary weight decay from pathprox_sgd.
  tx = pp.pathprox_sgd(1.0, 0.5, groups, balance=False)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.5 * params["Dense_0"]["kernel"])

  params["Dense_2"]["kernel"] = params["Dense_2"]["kernel"].at[np.array([2, 7])].set(0.0)
  smaller, kept = pp.compact(params, groups)
  assert smaller["Dense_0"]["kernel"].shape == (D_MODEL, FFN - 2)
  np.testing.assert_allclose(
    jax.jit(SwiGLU(kept[0].width).apply)({"params": smaller}, X),
    jax.jit(model.apply)({"params": params}, X),
    atol=1e-5,
  )
