"""The experiment configs, and the config keys the optimiser reads."""

import ast
import importlib
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pathprox_jax as pp
from configs import common
from experiments import experiment, models

CONFIGS = pathlib.Path(common.__file__).parent
EXPERIMENTS = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem not in ("__init__", "common"))


def assigned_keys(path: pathlib.Path) -> list[str]:
  """The keys of every ``config.key = value`` in a config file."""
  return [
    node.targets[0].attr
    for node in ast.walk(ast.parse(path.read_text()))
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)
  ]


def test_every_common_key_has_a_one_line_comment():
  lines = (CONFIGS / "common.py").read_text().splitlines()
  keys = set(common.get_config())
  commented = {
    line.split("=")[0].strip().removeprefix("config.")
    for line in lines
    if line.strip().startswith("config.") and "  # " in line
  }
  assert keys - commented == set()


def base_config(path: pathlib.Path):
  """The config a config file starts from: another experiment's it imports, else the defaults."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module == "configs":
      for alias in node.names:
        if alias.name != "common":
          return importlib.import_module(f"configs.{alias.name}").get_config()
  return common.get_config()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_configs_set_only_what_differs_from_the_defaults(experiment):
  defaults = base_config(CONFIGS / f"{experiment}.py")
  config = importlib.import_module(f"configs.{experiment}").get_config()
  for key in assigned_keys(CONFIGS / f"{experiment}.py"):
    if key in defaults:
      assert config[key] != defaults[key], f"{experiment} re-sets {key} to its default"


def params_and_groups():
  """A one-group MLP's params, with an ungrouped classifier, and their group spec."""
  model = models.MLP((4, 3, 2), (True, False, False))
  boxed = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
  return nn.meta.unbox(boxed), pp.group_spec(boxed)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pathprox", "wd"])
def test_regularize_bias_reaches_the_optimiser(method):
  config = common.get_config()
  config.method, config.weight_decay = method, 0.1
  params, groups = params_and_groups()
  zero_grads = jax.tree.map(jnp.zeros_like, params)

  def step(regularize_bias):
    config.regularize_bias = regularize_bias
    tx = experiment.create_optimizer(config, groups, lambda count: 0.5)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    return updates

  plain, regularized = step(False), step(True)
  bias = params["Dense_2"]["bias"]  # the ungrouped classifier's bias
  np.testing.assert_allclose(plain["Dense_2"]["bias"], 0, atol=1e-7)
  np.testing.assert_allclose(regularized["Dense_2"]["bias"], -0.5 * 0.1 * bias, rtol=1e-6)
  if method == "pathprox":  # the units' norms include their biases
    expected = pp.pathprox_sgd(0.5, 0.1, groups, regularize_bias=True)
    updates, _ = expected.update(zero_grads, expected.init(params), params)
    jax.tree.map(np.testing.assert_allclose, regularized, updates)
