"""``--group-source``: the harness's groups, discovered from the trace and checked."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import pathprox_jax as pp
from configs import load_config
from experiments import cli, groups, mlp, models
from tests.conftest import flags

SMALL = {
  "mnist_subset_mlp": {},
  "mnist_mlp": {},
  "cifar_vgg": {"channels": (8, 8, 16, 16), "pool_after": (1, 3)},
  "fashion_mnist_vit": {"mlp_dim": (16, 0), "num_heads": (2, 2), "width": 16, "head_dim": 4},
}
SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


@pytest.mark.parametrize("experiment", sorted(SMALL))
def test_auto_finds_the_annotations_groups_of_every_model(experiment):
  config = load_config(experiment)
  config.update(SMALL[experiment])
  model = models.create_model(config)
  x = jax.ShapeDtypeStruct((1, *SHAPES[config.dataset]), jnp.float32)
  boxed = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  family = models.family(config)
  annotated = groups.group_spec(family, model, boxed, x, "annotations")
  assert groups.group_spec(family, model, boxed, x, "auto") == annotated
  assert pp.unit_counts(nn.meta.unbox(boxed), annotated)


@pytest.mark.slow
def test_auto_refuses_annotations_that_the_trace_contradicts(monkeypatch):
  model = models.MLP((8, 8, 3), (True, True, False))
  x = jnp.ones((1, 5))
  boxed = model.init(jax.random.key(0), x)["params"]
  wrong = jax.tree.map(lambda spec: None, pp.group_spec(boxed), is_leaf=lambda s: s is not None)
  monkeypatch.setattr(pp, "group_spec", lambda boxed: wrong)
  with pytest.raises(groups.GroupSourceError, match="pass --group-source annotations"):
    groups.group_spec(mlp.FAMILY, model, boxed, x, "auto")
  assert groups.group_spec(mlp.FAMILY, model, boxed, x, "annotations") is wrong


def test_run_prints_and_records_its_groups(finished_run):
  workdir, _ = finished_run
  out = (workdir.parent / "stdout.txt").read_text()
  assert "PathProx groups: 3 (96 units) from the trace (the annotations' groups); " in out
  record = json.loads((workdir / "config.json").read_text())
  assert record["group_source"] == "auto" and record["units"] == {"0": 32, "1": 32, "2": 32}


def test_bad_group_source_is_one_line_exit_2(raw_mnist, tmp_path, capsys):
  argv = [*flags(raw_mnist, tmp_path), "--workdir", str(tmp_path / "run"), "--group-source", "x"]
  assert cli.main("mnist_subset_mlp", argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--group-source must be one of ('auto', 'annotations')" in err
  assert not (tmp_path / "run").exists()
