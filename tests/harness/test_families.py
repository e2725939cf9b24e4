"""The model-family registry: each family gives the whole interface; only it knows its model."""

import dataclasses
import importlib
import pathlib
import re

import jax
import numpy as np
import pytest
from flax.core import meta

import pathprox_jax as pp
from configs import ConfigError, load_config
from experiments import config_checks, family, models
from experiments.train_step import model_state

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"
# One experiment of each family, made small.
SMALL = {
  "mlp": ("mnist_subset_mlp", {"features": (8, 6, 5, 10), "relu": (True, False, True, False)}),
  "vgg": ("cifar_vgg", {"channels": (4, 4, 6, 6), "pool_after": (1,)}),
  "vit": ("fashion_mnist_vit", {"num_heads": (2, 1), "mlp_dim": (8, 4), "width": 8, "head_dim": 4}),
  "resnet": (
    "fashion_mnist_resnet",
    {"stage_widths": (4, 8, 8), "blocks": 1, "inner_widths": (4, 8, 8)},
  ),
}
SHAPES = {"mnist": (2, 28, 28, 1), "fashion_mnist": (2, 28, 28, 1), "cifar10": (2, 32, 32, 3)}
# What testing a config's model or a model's class looks like. Outside the registry and the
# family modules it is refused: those modules ask the family instead.
BRANCHES = re.compile(
  r"config\.model\b|config\[[\"']model[\"']\]|\.get\([\"']model[\"']"
  r"|isinstance\([^)]*\b(MLP|NNXMLP|VGG|ViT|ResNet)\b|isinstance\(\s*model\b"
  r"|\bmodels\.(?!CONFIG_KEYS\b)[A-Z]\w*"
  r"|\bmodel\s*(==|!=|in)\s*[\"'(]"
)


def small_config(name):
  experiment, overrides = SMALL[name]
  config = load_config(experiment)
  config.update(overrides)
  return config


def test_every_family_is_registered_with_a_small_config():
  assert sorted(SMALL) == sorted(models.CONFIG_KEYS)


@pytest.mark.parametrize("name", sorted(models.CONFIG_KEYS))
def test_every_family_provides_the_whole_interface(name):
  config = small_config(name)
  assert config.model == name
  fam = models.family(config)
  assert isinstance(fam, family.Family)
  assert fam is importlib.import_module(f"experiments.{name}").FAMILY
  for field in dataclasses.fields(family.Family):
    value = getattr(fam, field.name)
    assert callable(value) or isinstance(value, (bool, tuple)), field.name
  assert set(fam.widths_keys) <= set(models.CONFIG_KEYS[name])
  assert all(key in config for key in models.CONFIG_KEYS[name])
  fam.check_config(config)
  config_checks.validate(config)

  model = fam.create(config)
  x = jax.ShapeDtypeStruct(SHAPES[config.dataset], jax.numpy.float32)
  variables = jax.eval_shape(model.init, jax.random.key(1), x)
  boxed, state = variables["params"], meta.unbox(model_state(variables))
  params = meta.unbox(boxed)
  groups = fam.group_spec(model, boxed)
  widths = pp.unit_counts(params, groups)
  assert widths and set(fam.group_names(config)) <= set(widths)
  kept_all = {g: pp.KeptUnits(np.arange(n), n) for g, n in widths.items()}
  assert fam.compacted_widths(config, kept_all) == {k: tuple(config[k]) for k in fam.widths_keys}

  def folded_logits(params, state, x):
    net, net_params = fam.fold(model, params)
    return net.apply({"params": net_params, **state}, x)

  assert jax.eval_shape(folded_logits, params, state, x).shape == (x.shape[0], 10)


@pytest.mark.parametrize("name", sorted(models.CONFIG_KEYS))
def test_a_family_refuses_widths_below_its_least(name):
  config = small_config(name)
  fam = models.family(config)
  key = fam.widths_keys[0]
  config[key] = (-1, *config[key][1:])
  least = 0 if fam.groups_may_be_empty else 1
  with pytest.raises(ConfigError, match=f"must be widths >= {least}"):
    fam.check_config(config)


def test_an_unknown_model_is_refused_by_the_registry():
  config = small_config("mlp")
  config.model = "transformer"
  with pytest.raises(
    ConfigError, match=r"--model must be one of \('mlp', 'vgg', 'vit', 'resnet'\)"
  ):
    models.family(config)


def branches_on_the_model(folder: pathlib.Path) -> list[str]:
  """``file:line: text`` of each line of the harness that tests which model it has.

  The registry (``models.py``) and the family modules (``<family>.py``) may; nothing else.
  """
  allowed = {"models.py", *(f"{name}.py" for name in models.CONFIG_KEYS)}
  found = []
  for path in sorted(folder.glob("*.py")):
    if path.name in allowed:
      continue
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if BRANCHES.search(line):
        found.append(f"{path.name}:{number}: {line.strip()}")
  return found


def test_no_module_outside_the_families_branches_on_the_model():
  assert branches_on_the_model(EXPERIMENTS) == []


@pytest.mark.parametrize(
  "line",
  [
    'if config.model == "mlp":',
    'least = 0 if model == "vit" else 1',
    "if isinstance(model, models.MLP):",
    "keys = MODEL_KEYS.get(config['model'], ())",
    "annotated = model.group_spec(boxed) if isinstance(model, ViT) else None",
  ],
)
def test_the_branch_check_finds_a_branch(tmp_path, line):
  (tmp_path / "evaluation.py").write_text(f"x = 1\n{line}\n")
  assert branches_on_the_model(tmp_path) == [f"evaluation.py:2: {line}"]
