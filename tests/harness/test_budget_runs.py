"""Runs to a FLOPs budget (``--target-flops``): the flags' checks, the optimiser, ``flops_kept``,
the target reached and held through the heal, and resume anywhere.

Runs are the tiny MNIST-subset MLP on generated data, through the real command line.
"""

import json
import signal

import jax
import ml_collections
import numpy as np
import optax
import pytest
from conftest import TOY_VIT, flags, read_rows, toy_vit_flags
from test_evaluation import make_evaluator
from test_experiments import assert_rows_close, assert_same_run

import configs
import pathprox_jax as pp
from experiments import (
  checkpointing,
  cli,
  compact,
  evaluation,
  experiment,
  interrupts,
  run_folder,
  sweep,
  trained_run,
)

TARGET, PROX_START, HEAL_START, TOTAL = 0.5, 10, 40, 60
# Stops of the interrupted runs: the first sparsify step next, mid-ramp (the controller's
# state), the first heal step next (the frozen mask), mid-heal.
STOPS = (10, 25, 40, 50)
# The tiny MLP's groups (its hidden layers 0, 2 and 4; ReLU, then a linear bottleneck) and
# their units' FLOPs per example, counted by hand: 2 d_in + 2 d_out per neuron.
COSTS = {0: 2 * 784 + 2 * 32, 1: 2 * 32 + 2 * 32, 2: 2 * 32 + 2 * 10}


def budget_flags(raw_mnist, tmp_path, method, **overrides):
  """A 60-step run: warm-up to 10, ramp to half the FLOPs by 40, heal to 60; a row per step."""
  values = {"total_iter": TOTAL, "log_freq": 1, "save_freq": 10**5, "method": method,
            "target_flops": TARGET, "prox_start": PROX_START, "heal_start": HEAL_START,
            "weight_decay": 1e-2}  # fmt: skip
  values.update(overrides)
  return flags(raw_mnist, tmp_path, **values)


def run(argv):
  return cli.main("mnist_subset_mlp", [str(a) for a in argv])


@pytest.mark.parametrize(
  "extra, message",
  [
    (["--target-flops", "1.5"], "--target-flops must be in [0, 1] (0 or 1: no budget), got 1.5"),
    (["--target-flops", "-0.1"], "--target-flops must be a finite number >= 0, got -0.1"),
    (["--method", "gmp"], "--method gmp needs --target-flops in (0, 1)"),
    (["--heal-start", "10"], "--prox-start and --heal-start apply only with --target-flops"),
    (
      ["--target-flops", "0.5"],
      "needs 0 <= --prox-start < --heal-start <= --total-iter, got 0, 0 and 20",
    ),
    (["--target-flops", "0.5", "--prox-start", "10", "--heal-start", "10"], "got 10, 10 and 20"),
    (["--target-flops", "0.5", "--heal-start", "30"], "got 0, 30 and 20"),
    (
      ["--target-flops", "0.5", "--heal-start", "10", "--method", "wd"],
      "--target-flops needs --method pathprox or gmp",
    ),
    (
      ["--target-flops", "0.5", "--heal-start", "10", "--weight-decay", "0"],
      "--method pathprox needs --weight-decay > 0",
    ),
    (
      ["--target-flops", "0.5", "--heal-start", "10", "--threshold-rule", "paper"],
      "pass --threshold-rule fixed_point",
    ),
    (
      [
        "--target-flops",
        "0.5",
        "--heal-start",
        "10",
        "--method",
        "gmp",
        "--heal-weight-decay",
        "1",
      ],
      "--heal-weight-decay applies only with --target-flops in (0, 1) and --method pathprox",
    ),
    (["--heal-weight-decay", "-1"], "--heal-weight-decay must be a finite number >= 0, got -1"),
    (["--kept-threshold", "uniform"], "--kept-threshold applies only with --target-flops in"),
    (
      ["--target-flops", "0.5", "--heal-start", "10", "--kept-threshold", "flat"],
      "--kept-threshold must be one of ('cost', 'uniform'), got 'flat'",
    ),
  ],  # fmt: skip
)
def test_bad_budget_flags_are_one_line_errors(extra, message, raw_mnist, tmp_path, capsys):
  workdir = tmp_path / "run"
  assert run(flags(raw_mnist, tmp_path, workdir=workdir) + extra) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err
  assert not workdir.exists()


def budget_config(**overrides):
  config = ml_collections.ConfigDict(configs.load_config("mnist_subset_mlp").to_dict())
  config.features, config.total_iter = (8, 8, 8, 8, 8, 10), 100
  config.update(target_flops=0.5, prox_start=2, heal_start=50, **overrides)
  return config


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("method", ["pathprox", "gmp"])
def test_the_budget_optimiser_takes_the_models_unit_costs(method, optimizer):
  config = budget_config(method=method, optimizer=optimizer)
  template, groups = trained_run.abstract_state(config)
  params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), template.params)
  schedule = optax.constant_schedule(0.1)
  state = experiment.create_optimizer(config, groups, schedule, dict(COSTS)).init(params)
  assert isinstance(state, pp.BudgetState)
  with pytest.raises(ValueError, match=r"unit_costs name groups \[0, 1\] but the groups are"):
    experiment.create_optimizer(config, groups, schedule, {0: 1.0, 1: 2.0}).init(params)
  config.target_flops = 1.0  # a target of 1 keeps every unit: no budget
  assert not isinstance(experiment.create_optimizer(config, groups, schedule).init(params),
                        pp.BudgetState)  # fmt: skip


def test_heal_weight_decay_reaches_the_budget_optimiser():
  def heal_step(heal_weight_decay):
    config = budget_config(heal_weight_decay=heal_weight_decay)
    template, groups = trained_run.abstract_state(config)
    params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), template.params)
    tx = experiment.create_optimizer(config, groups, optax.constant_schedule(0.1))
    state = tx.init(params)._replace(count=np.int32(config.heal_start))
    zeros = jax.tree.map(np.zeros_like, params)
    return jax.jit(tx.update)(zeros, state, params)[0]

  # A zero gradient while healing: only the decay moves the grouped kernels, by -lr * λ * 1.
  decayed, plain = heal_step(0.5), heal_step(0.0)
  assert np.allclose(decayed["Dense_1"]["kernel"], -0.1 * 0.5)
  assert np.allclose(plain["Dense_1"]["kernel"], 0.0)


def test_flops_kept_weighs_active_units_by_their_cost():
  kept = evaluation.flops_kept({0: 2, 1: 8}, {0: 4, 1: 8}, {0: 10.0, 1: 1.0})
  assert kept == pytest.approx((10 * 2 + 8) / (10 * 4 + 8))


def test_every_evaluation_logs_flops_kept_from_the_models_unit_costs():
  evaluator, params, _, _ = make_evaluator(1)  # no budget; groups 0 and 1 of 16 neurons each
  params = jax.tree.map(np.array, params)
  params["Dense_1"]["kernel"][:4] = 0  # four neurons of group 0 off (their "out" rows)
  params["Dense_3"]["kernel"][:1] = 0  # one of group 1
  costs = {0: 2 * 784 + 2 * 16, 1: 2 * 16 + 2 * 16}
  expected = (12 * costs[0] + 15 * costs[1]) / (16 * costs[0] + 16 * costs[1])
  assert evaluator(params)["flops_kept"] == pytest.approx(expected, rel=1e-6)


def hand_flops_kept(row):
  active = {g: row[f"active_units/g{g}"] for g in COSTS}
  return sum(COSTS[g] * active[g] for g in COSTS) / sum(32 * c for c in COSTS.values())


# The tests that read budget_run share one xdist worker (--dist loadgroup): each is trained once.
ON_BUDGET_RUN = pytest.mark.xdist_group("budget_run")


@pytest.fixture(scope="module", params=["pathprox", "gmp"])
def budget_run(request, raw_mnist, tmp_path_factory):
  """An uninterrupted budget run of each method (the reference of the resumed ones)."""
  tmp = tmp_path_factory.mktemp(request.param)
  argv = budget_flags(raw_mnist, tmp, request.param)
  assert run(argv + ["--workdir", tmp / "run"]) == 0
  return request.param, tmp / "run", argv


@ON_BUDGET_RUN
@pytest.mark.slow  # two 60-step runs
def test_a_budget_run_logs_flops_kept_and_holds_its_units_through_the_heal(budget_run):
  method, workdir, _ = budget_run
  record = json.loads((workdir / "config.json").read_text())
  assert (record["method"], record["target_flops"]) == (method, TARGET)
  assert (record["prox_start"], record["heal_start"]) == (PROX_START, HEAL_START)
  rows = read_rows(workdir)
  assert [r["step"] for r in rows] == list(range(TOTAL + 1))
  for row in rows:  # logged with every evaluation, from the model's own unit costs
    assert row["flops_kept"] == pytest.approx(hand_flops_kept(row), rel=1e-6)
  assert all(r["flops_kept"] == 1 for r in rows[: PROX_START + 1])  # the dense warm-up
  assert rows[HEAL_START]["flops_kept"] < 1
  healing = [{k: v for k, v in r.items() if k.startswith("active_units/")} for r in rows]
  assert all(h == healing[HEAL_START] for h in healing[HEAL_START:])


@ON_BUDGET_RUN
@pytest.mark.slow  # the runs of the test above
def test_a_budget_run_ends_within_three_percent_of_its_target(budget_run):
  method, workdir, _ = budget_run
  assert read_rows(workdir)[-1]["flops_kept"] == pytest.approx(TARGET, rel=0.03)


def interrupt_at(stop, monkeypatch):
  """Makes the next run stop on SIGINT after ``stop`` steps (one step per stretch: a row a step).

  The loop polls ``Interrupts.requested`` after every stretch, here after every step.
  """
  polls = iter(range(1, 10**6))
  monkeypatch.setattr(
    interrupts.Interrupts, "requested", lambda self: signal.SIGINT if next(polls) == stop else None
  )


def active_units(workdir, step):
  """Which units are on (``||w_i|| ||v_i|| > 0``) in the run's checkpoint of ``step``."""
  config = run_folder.read_config(workdir / "config.json")
  groups = trained_run.abstract_state(config)[1]
  manager = checkpointing.Checkpoints(workdir / "checkpoints")
  params = manager.manager.restore(step).state["params"]
  manager.close()
  return {g: np.asarray(n) > 0 for g, n in pp.unit_path_norms(params, groups).items()}


@ON_BUDGET_RUN
@pytest.mark.slow  # seven runs of 60 steps in all, for each method
def test_a_budget_run_resumed_anywhere_equals_the_uninterrupted_one(budget_run, monkeypatch):
  method, reference, argv = budget_run
  workdir = reference.parent / "interrupted"
  reached = 0
  for stop in STOPS:  # each leg stops `stop - reached` steps after its (re)start
    interrupt_at(stop - reached, monkeypatch)
    resume = ["--resume"] if reached else []
    assert run(argv + ["--workdir", workdir, *resume]) == 128 + signal.SIGINT
    assert checkpointing.latest_step(workdir / "checkpoints") == stop
    reached = stop
  monkeypatch.undo()
  assert run(argv + ["--workdir", workdir, "--resume"]) == 0
  assert_same_run(workdir, reference)
  # The units on at the heal's start are the units on at the end.
  at_heal, at_end = active_units(workdir, HEAL_START), active_units(workdir, TOTAL)
  assert jax.tree.map(np.array_equal, at_heal, at_end) == dict.fromkeys(at_heal, True)


@ON_BUDGET_RUN
@pytest.mark.slow  # a sweep of two members, for each method
def test_a_budget_sweep_member_is_the_single_run(budget_run):
  method, reference, argv = budget_run
  folder = reference.parent / "sweep"
  i = argv.index("--weight-decay")
  members = [*argv[:i], *argv[i + 2 :], "--weight-decays", "1e-2,3e-2", "--seeds", "0"]
  assert sweep.main(["mnist_subset_mlp", *map(str, members), "--workdir", str(folder)]) == 0
  assert_rows_close(read_rows(folder / "wd0.01-seed0"), read_rows(reference), rtol=2e-4)
  other = read_rows(folder / "wd0.03-seed0")[-1]  # another λ (for PathProx, another start)
  assert other["flops_kept"] < 1 and other["train_loss"] != read_rows(reference)[-1]["train_loss"]


@pytest.mark.slow  # a run, its compaction with the training state, and the heal on it
@pytest.mark.parametrize("method", ["pathprox", "gmp"])
def test_the_heal_on_the_compacted_model_is_the_dense_heal(method, raw_mnist, tmp_path):
  workdir, smaller = tmp_path / "run", tmp_path / "smaller"
  # Momentum, so that the heal's first steps on the smaller model need the compacted trace.
  argv = budget_flags(raw_mnist, tmp_path, method, momentum=0.5, save_freq=HEAL_START)
  assert run(argv + ["--workdir", workdir]) == 0
  argv_compact = [str(workdir), "--step", str(HEAL_START), "--with-state", "--out", str(smaller)]
  assert compact.main(argv_compact) == 0
  # The smaller run goes on from the heal's start with the run's data, schedule and total.
  data = ["--raw-data-dir", raw_mnist, "--data-dir", tmp_path / "tfds"]
  assert run(["--workdir", smaller, "--resume", *data]) == 0
  rows, dense = read_rows(smaller), read_rows(workdir)
  assert [r["step"] for r in rows] == list(range(TOTAL + 1))
  untimed = [{k: v for k, v in r.items() if k != "wall_time"} for r in rows + dense]
  assert untimed[: HEAL_START + 1] == untimed[len(rows) :][: HEAL_START + 1]  # the history
  kept = {g: len(k) for g, k in json.loads((smaller / "compact.json").read_text())["kept"].items()}
  assert sum(kept.values()) < 3 * 32
  same = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "path_norm")
  for row, dense_row in zip(rows[HEAL_START + 1 :], dense[HEAL_START + 1 :], strict=True):
    assert (
      {g: row[f"active_units/g{g}"] for g in kept}
      == {g: dense_row[f"active_units/g{g}"] for g in kept}
      == kept
    )
    np.testing.assert_allclose([row[k] for k in same], [dense_row[k] for k in same], rtol=2e-4)


@pytest.mark.slow  # a toy ViT budget run, its compaction with the training state, the heal on it
def test_the_heal_goes_on_on_a_vit_with_a_group_of_no_units_left(raw_mnist, tmp_path):
  workdir, smaller = tmp_path / "run", tmp_path / "smaller"
  data = toy_vit_flags(raw_mnist, tmp_path)
  argv = ["--workdir", workdir, *data, *TOY_VIT, "--method", "gmp", "--target-flops", "0.15",
          "--prox-start", "5", "--heal-start", "20", "--total-iter", "30", "--save-freq", "20",
          "--log-freq", "1"]  # fmt: skip
  assert cli.main("fashion_mnist_vit", [str(a) for a in argv]) == 0
  assert compact.main([str(workdir), "--step", "20", "--with-state", "--out", str(smaller)]) == 0
  kept = {g: len(k) for g, k in json.loads((smaller / "compact.json").read_text())["kept"].items()}
  assert 0 in kept.values()  # a block with no heads (or neurons) left: a NoHeads (OutBias) layer
  assert cli.main("fashion_mnist_vit", ["--workdir", str(smaller), "--resume", *data]) == 0
  rows, dense = read_rows(smaller), read_rows(workdir)
  same = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
  for row, dense_row in zip(rows[21:], dense[21:], strict=True):
    # The smaller model has no unit of an empty group: it logs the others.
    assert {g: row.get(f"active_units/g{g}", 0) for g in kept} == kept
    assert {g: dense_row[f"active_units/g{g}"] for g in kept} == kept
    np.testing.assert_allclose([row[k] for k in same], [dense_row[k] for k in same], rtol=2e-4)


def test_the_state_in_the_smaller_models_structure_drops_only_empty_arrays():
  template = {"kernel": jax.ShapeDtypeStruct((2, 3), np.float32)}
  state = {"kernel": np.ones((2, 3)), "empty_heads": np.zeros((2, 0))}
  assert trained_run.state_like(template, state).keys() == {"kernel"}
  with pytest.raises(ValueError, match=r"\['heads'\] has no place in the smaller model's state"):
    trained_run.state_like(template, {**state, "heads": np.ones(1)})
  with pytest.raises(ValueError, match=r"has \(3, 2\) at \['kernel'\], the smaller model \(2, 3\)"):
    trained_run.state_like(template, {"kernel": np.ones((3, 2))})


def test_with_state_needs_exact_compaction(finished_run, tmp_path, capsys):
  workdir, _ = finished_run
  out = tmp_path / "smaller"
  assert compact.main([str(workdir), "--with-state", "--atol", "1e-3", "--out", str(out)]) == 2
  assert "--with-state needs exact compaction" in capsys.readouterr().err
  assert not out.exists()


def test_a_step_without_checkpoint_is_a_one_line_error(finished_run, tmp_path, capsys):
  workdir, _ = finished_run
  assert compact.main([str(workdir), "--step", "15", "--out", str(tmp_path / "smaller")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "has no checkpoint at step 15 (its steps: 10, 20)" in err
