"""Discovery groups only units that PathProx may rescale, and refuses the rest with a reason."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import pathprox_jax as pp

G = pp.GroupSpec
X = jnp.ones((4, 5))
LECUN, NORMAL = nn.initializers.lecun_normal(), nn.initializers.normal(1.0)


class Unsound(nn.Module):
  """A hidden layer (``kernel``, ``bias`` of this module) whose units must not form a group."""

  kind: str

  @nn.compact
  def __call__(self, x):
    k = self.param("kernel", LECUN, (x.shape[-1], 8))
    b = self.param("bias", NORMAL, (8,))
    if self.kind == "table":  # a kernel-shaped parameter added like a bias
      return nn.Dense(3)(nn.relu(x @ k + self.param("table", NORMAL, (x.shape[0], 8))))
    if self.kind == "scale":  # a 1-D parameter of the module that is no bias
      return nn.Dense(3)(nn.relu(x @ k + b) * self.param("scale", NORMAL, (8,)))
    h = nn.relu(x @ k + b)
    if self.kind == "bias-skip":
      return nn.Dense(3)(h) + b[:3]
    if self.kind == "bias-gate":
      return nn.Dense(3)(h * nn.sigmoid(b))
    if self.kind == "kernel-read":
      return nn.Dense(3)(h) + jnp.sum(k**2)
    if self.kind == "int-cast":
      return nn.Dense(3)(h.astype(jnp.int32).astype(jnp.float32))
    return nn.Dense(3)(getattr(jnp, self.kind)(h))  # round, floor, ceil, sign


REASONS = {
  "bias-skip": "bias is also read outside the layer (readers: add, slice)",
  "bias-gate": "bias is also read outside the layer (readers: add, logistic)",
  "kernel-read": "kernel is also read outside the layer (readers: dot_general, integer_pow)",
  "int-cast": "outputs are cast to int32 by convert_element_type, which rounds them",
  "round": "outputs are rounded by round (not positively homogeneous)",
  "floor": "outputs are rounded by floor",
  "ceil": "outputs are rounded by ceil",
  "sign": "outputs are rounded by sign",
  "table": "outputs get table (4, 8) of its module added, which cannot be its bias",
  "scale": "module also holds scale (8,), which is no layer's bias",
}


@pytest.mark.parametrize("kind", REASONS)
def test_unsound_units_are_refused_with_their_reason(kind):
  model = Unsound(kind)
  params = model.init(jax.random.key(0), X)["params"]
  report = pp.explain_groups(model.apply, params, X)
  assert not jax.tree.leaves(report.groups)
  first = str(report).splitlines()[0]
  assert first.startswith("kernel (5, 8): no group: its ") and REASONS[kind] in first
  with pytest.raises(ValueError, match="found no PathProx unit group"):
    pp.discover_groups(model.apply, params, X)


class OneModuleMLP(nn.Module):
  """Two layers written in one module: each kernel's bias is the other layer's module-mate."""

  @nn.compact
  def __call__(self, x):
    w1, b1 = self.param("w1", LECUN, (x.shape[-1], 8)), self.param("b1", NORMAL, (8,))
    w2, b2 = self.param("w2", LECUN, (8, 3)), self.param("b2", NORMAL, (3,))
    return nn.relu(x @ w1 + b1) @ w2 + b2


def test_layers_sharing_a_module_with_their_biases_still_group():
  params = OneModuleMLP().init(jax.random.key(0), X)["params"]
  groups = pp.discover_groups(OneModuleMLP().apply, params, X)
  assert groups == {"w1": G(0, "in"), "b1": G(0, "in"), "w2": G(0, "out"), "b2": G(0, "out")}


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for features in (8, 8, 8):
      x = nn.relu(nn.Dense(features)(x))
    return nn.Dense(3)(x)


def _checkpointed(p, x):
  return jax.checkpoint(lambda p, x: MLP().apply({"params": p}, x))(p, x)


@pytest.mark.parametrize(
  "fn",
  [nn.remat(MLP)().apply, _checkpointed],
  ids=["nn.remat", "jax.checkpoint"],
)
def test_rematerialised_models_are_discovered_like_the_plain_one(fn):
  params = MLP().init(jax.random.key(0), X)["params"]
  plain = pp.explain_groups(MLP().apply, params, X)
  report = pp.explain_groups(fn, params, X)
  assert report.groups == plain.groups and report.chains == plain.chains == ((0, 1),)
  assert str(report) == str(plain)
