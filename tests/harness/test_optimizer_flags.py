"""The optimiser flags (``--optimizer``, ``--threshold-rule``, the schedule) through the CLI."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pathprox_jax as pp
from configs import common
from experiments import cli, experiment, models
from tests.conftest import flags


@pytest.mark.parametrize(
  "bad, message",
  [
    (["--optimizer", "adam"], "--optimizer must be one of ('sgd', 'adamw'), got 'adam'"),
    (["--threshold-rule", "exact"], "--threshold-rule must be one of ('fixed_point', 'paper')"),
    (["--optimizer", "adamw", "--momentum", "0.9"], "--momentum is SGD's; with --optimizer adamw"),
    (["--lr-schedule", "linear"], "--lr-schedule must be one of ('step', 'cosine')"),
    (["--warmup-iter", "20"], "--warmup-iter must be in [0, --total-iter), got 20"),
  ],
)
def test_bad_optimizer_flags_are_one_line_exit_2_with_nothing_written(
  bad, message, raw_mnist, tmp_path, capsys
):
  workdir = tmp_path / "run"
  code = cli.main(
    "mnist_subset_mlp", [*flags(raw_mnist, tmp_path), "--workdir", str(workdir), *bad]
  )
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and message in err
  assert not workdir.exists()


@pytest.mark.slow  # trains a run
@pytest.mark.parametrize("method", ["pathprox", "wd"])
def test_adamw_run_records_its_optimizer_and_trains(method, raw_mnist, tmp_path):
  workdir = tmp_path / method
  argv = [*flags(raw_mnist, tmp_path), "--workdir", str(workdir), "--method", method]
  argv += ["--optimizer", "adamw", "--lr", "0.003", "--lr-schedule", "cosine"]
  argv += ["--warmup-iter", "5", "--weight-decay", "0.05"]
  assert cli.main("mnist_subset_mlp", argv) == 0
  config = json.loads((workdir / "config.json").read_text())
  assert config["optimizer"] == "adamw" and config["lr_schedule"] == "cosine"
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_help_shows_the_optimizer_and_threshold_rule():
  from tests.harness.test_help import help_text

  text = help_text("experiments.fashion_mnist_vit_adamw")
  assert "--optimizer TEXT" in text and "--threshold-rule TEXT" in text
  assert "(λγ) (default: 'fixed_point')" in text and "(default: 'adamw')" in text


def one_group_mlp():
  model = models.MLP((6, 5, 3), (True, True, False))
  boxed = model.init(jax.random.key(0), jnp.ones((2, 4)))["params"]
  return nn.meta.unbox(boxed), pp.group_spec(boxed)


def updates_of(tx, params):
  grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
  state = tx.init(params)
  for _ in range(3):  # momentum and Adam's moments fill up
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.slow
def test_adamw_baseline_is_optax_adamw_on_the_kernels():
  params, groups = one_group_mlp()
  config = common.get_config()
  config.method, config.optimizer, config.weight_decay = "wd", "adamw", 0.1
  schedule = optax.linear_schedule(0.01, 0.001, 3)
  ours = updates_of(experiment.create_optimizer(config, groups, schedule), params)
  expected = updates_of(optax.adamw(schedule, weight_decay=0.1, mask=pp.kernel_mask), params)
  jax.tree.map(np.testing.assert_array_equal, ours, expected)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["fixed_point", "paper"])
def test_threshold_rule_reaches_pathprox_sgd(rule):
  params, groups = one_group_mlp()
  config = common.get_config()
  config.momentum, config.weight_decay, config.threshold_rule = 0.9, 0.5, rule
  ours = updates_of(
    experiment.create_optimizer(config, groups, optax.constant_schedule(0.1)), params
  )
  tx = pp.pathprox_sgd(0.1, 0.5, groups, momentum=0.9, threshold_rule=rule)
  jax.tree.map(np.testing.assert_array_equal, ours, updates_of(tx, params))
  other = "paper" if rule == "fixed_point" else "fixed_point"
  different = pp.pathprox_sgd(0.1, 0.5, groups, momentum=0.9, threshold_rule=other)
  assert not np.allclose(
    ours["Dense_1"]["kernel"], updates_of(different, params)["Dense_1"]["kernel"]
  )


def test_warmup_then_cosine_schedule():
  config = common.get_config()
  config.lr, config.lr_schedule, config.warmup_iter, config.total_iter = 0.2, "cosine", 10, 110
  schedule = experiment.learning_rate_schedule(config, steps_per_epoch=7)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.1, 0.2], rtol=1e-6)
  np.testing.assert_allclose([schedule(60), schedule(110)], [0.1, 0.0], atol=1e-6)


def test_warmup_shifts_no_milestone():
  config = common.get_config()
  config.lr, config.lr_milestones, config.warmup_iter = 0.2, (2,), 4
  schedule = experiment.learning_rate_schedule(config, steps_per_epoch=5)
  np.testing.assert_allclose([schedule(4), schedule(9), schedule(10)], [0.2, 0.2, 0.02], rtol=1e-6)
