"""Every misuse raises a ValueError whose message names the offending parameter."""

import re

import jax.numpy as jnp
import pytest

import pathprox_jax as pp

G = pp.GroupSpec


def network():
  """A valid network: group 0 is (a, b); c is ungrouped."""
  params = {
    "a": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
    "b": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)},
    "c": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)},
  }
  groups = {
    "a": {"kernel": G(0, "in"), "bias": G(0, "in")},
    "b": {"kernel": G(0, "out"), "bias": G(0, "out")},
    "c": {"kernel": None, "bias": None},
  }
  return params, groups


TRANSFORMS = [pp.pathprox, pp.pathprox_sgd, pp.pathprox_adamw]
TRANSFORM_NAMES = ["pathprox", "pathprox_sgd", "pathprox_adamw"]


def without_out_side(params, groups):
  groups["b"] = {"kernel": None, "bias": None}
  groups["c"]["bias"] = None


def without_in_side(params, groups):
  groups["a"] = {"kernel": None, "bias": None}


def unit_counts_differ(params, groups):
  params["b"]["kernel"] = jnp.ones((5, 2))


def two_in_kernels(params, groups):
  groups["c"] = {"kernel": G(0, "in"), "bias": G(0, "in")}


def bias_outside_its_kernels_group(params, groups):
  groups["a"]["bias"] = None


def grouped_bias_without_grouped_kernel(params, groups):
  groups["c"]["bias"] = G(1, "in")


def grouped_bias_in_another_module(params, groups):
  groups["c"]["bias"] = G(0, "out")


def bias_shape_mismatch(params, groups):
  params["a"]["bias"] = jnp.zeros(3)


def spec_tree_mismatch(params, groups):
  del groups["c"]


def integer_parameter(params, groups):
  params["b"]["kernel"] = jnp.ones((4, 2), jnp.int32)


def scalar_parameter(params, groups):
  params["c"]["bias"] = jnp.zeros(())
  groups["c"]["bias"] = G(0, "out")


def spec_leaf_not_a_groupspec(params, groups):
  groups["c"]["kernel"] = "in"


CASES = {
  without_out_side: r"group 0 has an 'in' side \(\['a'\]\['kernel'\].*no 'out' side",
  without_in_side: r"group 0 has an 'out' side \(\['b'\]\['kernel'\].*no 'in' side",
  unit_counts_differ: r"\['a'\]\['kernel'\] \(3, 4\) has 4 units.*\['b'\]\['kernel'\] \(5, 2\)",
  two_in_kernels: r"2 kernels with role 'in': \['a'\]\['kernel'\].*\['c'\]\['kernel'\]",
  bias_outside_its_kernels_group: r"bias \['a'\]\['bias'\] \(4,\) is in the same module",
  grouped_bias_without_grouped_kernel: r"group 1 role 'in' has bias \['c'\]\['bias'\]",
  grouped_bias_in_another_module: r"bias \['c'\]\['bias'\].*not in the module.*\['b'\]\['kernel'\]",
  bias_shape_mismatch: r"bias \['a'\]\['bias'\] \(3,\) does not match",
  spec_tree_mismatch: r"only in params \[\"\['c'\]\['bias'\]\", \"\['c'\]\['kernel'\]\"\]",
  integer_parameter: r"\['b'\]\['kernel'\] \(4, 2\) has dtype int32",
  scalar_parameter: r"\['c'\]\['bias'\] is a scalar",
  spec_leaf_not_a_groupspec: r"\['c'\]\['kernel'\] is 'in'",
}
ENTRY_POINTS = {
  "pathprox_sgd.init": lambda p, g: pp.pathprox_sgd(0.1, 1e-3, g).init(p),
  "prox": lambda p, g: pp.prox(p, g, 0.1),
  "path_norm": lambda p, g: pp.path_norm(p, g),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
@pytest.mark.parametrize("corrupt", CASES, ids=[f.__name__ for f in CASES])
def test_invalid_groups_raise_naming_the_parameter(corrupt, entry):
  params, groups = network()
  entry(params, groups)  # the uncorrupted network is valid
  corrupt(params, groups)
  with pytest.raises(ValueError, match=CASES[corrupt]):
    entry(params, groups)


@pytest.mark.parametrize("make_tx", TRANSFORMS, ids=TRANSFORM_NAMES)
def test_update_without_params_raises(make_tx):
  params, groups = network()
  tx = make_tx(0.1, 1e-3, groups)
  with pytest.raises(ValueError, match="requires the current value of parameters"):
    tx.update(params, tx.init(params))


@pytest.mark.parametrize(
  "group, role, message",
  [
    (-1, "in", "group must be an int >= 0, got -1"),
    (True, "in", "got True"),
    (1.0, "in", "got 1.0"),
    (0, "hidden", "role must be 'in' or 'out', got 'hidden'"),
  ],
)
def test_bad_group_spec_raises(group, role, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    G(group, role)


@pytest.mark.parametrize(
  "weight_decay", [float("nan"), -1e-3, float("inf"), jnp.asarray(-1.0)], ids=str
)
@pytest.mark.parametrize("make_tx", TRANSFORMS, ids=TRANSFORM_NAMES)
def test_bad_weight_decay_raises(make_tx, weight_decay):
  _, groups = network()
  with pytest.raises(ValueError, match="weight_decay must be finite and >= 0, got"):
    make_tx(0.1, weight_decay, groups)


@pytest.mark.parametrize(
  "learning_rate", [float("nan"), -0.1, 0.0, float("inf"), jnp.asarray(-1.0)], ids=str
)
@pytest.mark.parametrize("make_tx", TRANSFORMS, ids=TRANSFORM_NAMES)
def test_bad_learning_rate_raises(make_tx, learning_rate):
  _, groups = network()
  with pytest.raises(ValueError, match="learning_rate must be finite and > 0, got"):
    make_tx(learning_rate, 1e-3, groups)


def test_non_numeric_hyperparameters_raise():
  _, groups = network()
  with pytest.raises(ValueError, match="learning_rate must be a number or a schedule, got 'x'"):
    pp.pathprox("x", 1e-3, groups)
  with pytest.raises(ValueError, match="momentum must be a number, got"):
    pp.pathprox(0.1, 1e-3, groups, momentum=lambda count: 0.9)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, float("nan")], ids=str)
@pytest.mark.parametrize("make_tx", [pp.pathprox, pp.pathprox_sgd], ids=TRANSFORM_NAMES[:2])
def test_bad_momentum_raises(make_tx, momentum):
  _, groups = network()
  with pytest.raises(ValueError, match=re.escape("momentum must be in [0, 1), got")):
    make_tx(0.1, 1e-3, groups, momentum=momentum)


@pytest.mark.parametrize("make_tx", [pp.pathprox, pp.pathprox_sgd], ids=TRANSFORM_NAMES[:2])
def test_unknown_threshold_rule_raises(make_tx):
  _, groups = network()
  message = "threshold_rule must be one of 'fixed_point', 'paper', got 'heuristic'"
  with pytest.raises(ValueError, match=re.escape(message)):
    make_tx(0.1, 1e-3, groups, threshold_rule="heuristic")


def test_group_spec_of_unannotated_params_raises():
  params, _ = network()
  with pytest.raises(ValueError, match=r"no PathProx group annotation.*boxed params"):
    pp.group_spec(params)


UNIT_AXIS_CASES = {
  "axis-out-of-range": (
    lambda p, g: g["a"].update(kernel=G(0, "in", 2)),
    r"\['a'\]\['kernel'\] \(3, 4\) has unit_axis=2, out of range",
  ),
  "bias-axis-disagrees": (
    lambda p, g: (p["a"].update(bias=jnp.zeros((3, 4))), g["a"].update(bias=G(0, "in", 0))),
    r"bias \['a'\]\['bias'\] \(3, 4\) does not match kernel .* units on axis 1",
  ),
  "out-bias-with-axis": (
    lambda p, g: g["b"].update(bias=G(0, "out", 0)),
    r"'out' bias \['b'\]\['bias'\] \(2,\) has a unit_axis",
  ),
  "follower-unit-count": (
    lambda p, g: g["c"].update(kernel=G(0, "follow"), bias=G(0, "follow")),
    r"'in' kernel .* has 4 units \(axis 1\) but 'follow' kernel \['c'\]\['kernel'\] \(2, 2\)",
  ),
}


@pytest.mark.parametrize("corrupt, message", UNIT_AXIS_CASES.values(), ids=UNIT_AXIS_CASES.keys())
def test_bad_unit_axes_raise_naming_the_parameter(corrupt, message):
  params, groups = network()
  corrupt(params, groups)
  with pytest.raises(ValueError, match=message):
    pp.path_norm(params, groups)


def test_bad_unit_axis_type_raises():
  with pytest.raises(ValueError, match="unit_axis must be an int or None, got 1.0"):
    G(0, "in", 1.0)
