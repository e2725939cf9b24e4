"""The traced graph itself: inlining, readers, dead code, parameter axes through layout ops."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from pathprox_jax._src import jaxpr_graph, jaxpr_rules

X = jnp.ones((2, 3))


def _prims(graph):
  return [eqn.prim for eqn in graph.eqns]


def test_call_bodies_are_inlined():
  # relu is a custom_jvp around a jit around max; the outer jit and the checkpoint go too.
  fn = jax.jit(jax.checkpoint(lambda p, x: jax.nn.relu(x @ p["w"])))
  graph = jaxpr_graph.trace(fn, {"w": jnp.ones((3, 4))}, X)
  assert _prims(graph) == ["dot_general", "max"]


def test_unused_equations_are_dropped_and_renumbered():
  def fn(p, x):
    jnp.sin(x) * 2.0  # computed, never used
    return jnp.tanh(x) @ p["w"]

  graph = jaxpr_graph.trace(fn, {"w": jnp.ones((3, 4))}, X)
  assert _prims(graph) == ["tanh", "dot_general"]
  assert [eqn.index for eqn in graph.eqns] == [0, 1]


def test_producers_readers_and_outputs():
  def fn(p, x):
    h = x @ p["w"]
    return h * 2.0 + h

  graph = jaxpr_graph.trace(fn, {"w": jnp.ones((3, 4))}, X)
  product, scale, add = graph.eqns
  h = product.outputs[0]
  assert graph.producer[h] is product
  assert graph.readers_of(h) == ((scale, 0), (add, 1))
  assert isinstance(scale.inputs[1], jaxpr_graph.Const)  # the literal 2.0
  assert graph.outputs == frozenset(add.outputs)
  assert graph.readers_of(add.outputs[0]) == ()  # only returned
  (w,) = graph.param_values
  assert graph.readers_of(w) == ((product, 1),)


def test_graph_is_complete_and_frozen():
  graph = jaxpr_graph.trace(lambda p, x: x @ p["w"], {"w": jnp.ones((3, 4))}, X)
  with pytest.raises(dataclasses.FrozenInstanceError):
    graph.eqns = ()
  assert set(graph.producer) == {v for eqn in graph.eqns for v in eqn.outputs}


def test_parameters_in_leaf_order():
  params = {"a": jnp.ones((3,)), "b": jnp.ones((3, 4))}
  graph = jaxpr_graph.trace(lambda p, x: (x * p["a"]) @ p["b"], params, X)
  refs = [graph.param(v) for v in graph.param_values]
  assert refs == [jaxpr_graph.ParamRef(0, (0,)), jaxpr_graph.ParamRef(1, (0, 1))]
  assert graph.param(graph.eqns[-1].outputs[0]) is None  # a product is no parameter


@pytest.mark.parametrize(
  "relayout, axes",
  [
    (lambda w: w.reshape(6, 4), (None, 2)),  # axes 0 and 1 merged
    (lambda w: w.reshape(2, 12), (0, None)),
    (lambda w: w.reshape(2, 3, 2, 2), (0, 1, None, None)),  # axis 2 split
    (lambda w: jnp.transpose(w, (2, 0, 1)), (2, 0, 1)),
    (lambda w: jnp.transpose(w, (1, 2, 0)).reshape(12, 2), (None, 0)),
    (lambda w: w[None], (None, 0, 1, 2)),
    (lambda w: jnp.broadcast_to(w, (5, 2, 3, 4)), (None, 0, 1, 2)),
    (lambda w: w.astype(jnp.float16).T, (2, 1, 0)),
  ],
  ids=["merge", "merge-tail", "split", "transpose", "transpose-reshape", "expand", "broadcast",
       "cast-transpose"],
)  # fmt: skip
def test_parameter_axes_through_layout_ops(relayout, axes):
  graph = jaxpr_graph.trace(lambda p: relayout(p["w"]), {"w": jnp.ones((2, 3, 4))})
  (out,) = graph.outputs
  assert graph.param(out) == jaxpr_graph.ParamRef(0, axes)


def test_a_rounding_cast_is_no_relayout():
  graph = jaxpr_graph.trace(lambda p: p["w"].astype(jnp.int32), {"w": jnp.ones((2, 3))})
  (out,) = graph.outputs
  assert graph.param(out) is None


def test_dot_general_axes():
  fn = lambda p, x: jnp.einsum("bij,bjk->bik", x, p["w"])  # noqa: E731
  graph = jaxpr_graph.trace(fn, {"w": jnp.ones((5, 3, 4))}, jnp.ones((5, 2, 3)))
  (eqn,) = graph.eqns
  axes = jaxpr_graph.dot_general_axes(graph, eqn)
  assert axes == (((0, 0), (1, 0)), ((0, 1),), ((1, 2),))
  assert jaxpr_graph.dot_general_output_axis(axes, 1, 2) == 2
  assert jaxpr_graph.dot_general_output_axis(axes, 1, 0) == 0
  assert jaxpr_graph.dot_general_output_axis(axes, 0, 2) is None  # contracted


@pytest.mark.parametrize(
  "fn, op, stop",
  [
    (lambda h: -h, "neg", ""),
    (lambda h: jnp.maximum(h, 0.0), "relu", ""),
    (lambda h: h.astype(jnp.int32), "", "rounds them"),
    (lambda h: jnp.tanh(h), "", "not positively homogeneous"),
    (lambda h: h.sum(axis=1), "", "reduced over the unit axis"),
  ],
  ids=["neg", "relu", "int-cast", "tanh", "sum"],
)  # fmt: skip
def test_step_rules(fn, op, stop):
  graph = jaxpr_graph.trace(lambda p, x: fn(x @ p["w"]), {"w": jnp.ones((3, 4))}, X)
  product, eqn = graph.eqns
  step = jaxpr_rules.step(graph, eqn, 0, product.outputs[0], 1)
  assert step.op == op and stop in step.stop
  assert (step.value, step.axis) == ((eqn.outputs[0], 1) if op else (None, None))
