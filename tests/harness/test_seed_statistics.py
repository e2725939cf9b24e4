"""Seed statistics of paired sweeps: crossings, pairing by seed, summaries over seeds."""

import math
import statistics
from pathlib import Path

import pytest

from experiments import run_folder, seed_statistics
from experiments.seed_statistics import Crossing


@pytest.mark.parametrize(
  "steps, difference, expected",
  [
    # +1 at 6k, -1 at 7k: halfway; back up from -0.5 at 9k to +1.5 at 10k: a quarter of the way.
    ([5000, 6000, 7000, 9000, 10000], [2, 1, -1, -0.5, 1.5], [(6500, True), (9250, False)]),
    ([0, 1000, 2000], [3, 1, -3], [(1250, True)]),
    ([0, 1000, 2000, 3000], [1, 0, 0, -1], [(1000, True)]),  # exactly level: the first such step
    ([0, 1000, 2000], [1, 0, 2], []),  # touches and stays above
    ([0, 1000, 2000], [0, -1, -2], []),  # equal start (one initialisation), then below: no crossing
    ([0, 1000, 2000, 3000], [1, math.nan, math.inf, -1], [(1500, True)]),  # non-finite: skipped
    ([0, 1000], [-1, 3], [(250, False)]),
  ],
)
def test_crossings_are_interpolated_linearly_between_evaluations(steps, difference, expected):
  second = [10.0 + 0.1 * i for i in range(len(steps))]
  first = [b + d for b, d in zip(second, difference, strict=True)]
  found = seed_statistics.crossings(steps, first, second)
  assert [c.downward for c in found] == [down for _, down in expected]
  for crossing, (step, _) in zip(found, expected, strict=True):
    assert math.isclose(crossing.step, step, abs_tol=1e-6)


def test_crossing_halfway_between_6k_and_7k_is_exactly_6500():
  assert seed_statistics.crossings([6000, 7000], [0.5, 0.25], [0.375, 0.375]) == [
    Crossing(6500.0, downward=True)
  ]


def run(seed: int | None, method: str, rows: list[dict], diverged_at: int | None = None):
  config = {"method": method, "total_iter": 4000, "seed": seed}
  if diverged_at is not None:
    config["diverged"] = {"step": diverged_at, "loss": "nan"}
  return run_folder.Run(Path(f"{method}/seed{seed}"), config, rows)


def rows(objective: list[float], units: float = 50.0) -> list[dict]:
  return [
    {"step": 1000 * i, "wd_objective": value, "active_units_pct": units, "test_acc": 0.9}
    for i, value in enumerate(objective)
  ]


def test_pairing_matches_seeds_and_names_the_missing_ones():
  first = [run(s, "pathprox", rows([1.0])) for s in (0, 1, 2, 4)]
  second = [run(s, "wd", rows([1.0])) for s in (3, 0, 2)] + [run(None, "wd", rows([1.0]))]
  pairing = seed_statistics.pair_by_seed(first, second)
  assert [(p.seed, p.first.seed, p.second.seed) for p in pairing.pairs] == [(0, 0, 0), (2, 2, 2)]
  assert [(p.first.method, p.second.method) for p in pairing.pairs] == [("pathprox", "wd")] * 2
  assert (pairing.only_first, pairing.only_second) == ([1, 4], [3])


def test_statistics_are_per_seed_then_mean_sample_std_min_max_and_n():
  wd = [1.0, 1.0, 1.0, 1.0, 1.0]
  pairs = [
    # below at 1500, back above at 3250
    seed_statistics.Pair(0, run(0, "pathprox", rows([1.0, 1.1, 0.9, 0.9, 1.3], 40.0)),
                         run(0, "wd", rows(wd, 100.0))),
    # below at 1250, never back
    seed_statistics.Pair(1, run(1, "pathprox", rows([1.0, 1.1, 0.7, 0.8, 0.5], 45.0)),
                         run(1, "wd", rows(wd, 100.0))),
    # below at 1200, then diverged at 2500 (rows to 2000): left out of 3000, not of 2000
    seed_statistics.Pair(2, run(2, "pathprox", rows([1.0, 1.1, 0.6], 60.0), 2500),
                         run(2, "wd", rows(wd, 100.0))),
  ]  # fmt: skip
  stats = {s.name: s for s in seed_statistics.seed_statistics(pairs, [2000, 3000], ("P", "W"))}
  below = stats["wd objective: P first below W (iteration)"]
  assert below.values == pytest.approx({0: 1500, 1: 1250, 2: 1200})
  assert below.summary == pytest.approx(
    (statistics.mean([1500, 1250, 1200]), statistics.stdev([1500, 1250, 1200]), 1200, 1500, 3)
  )
  back = stats["wd objective: P back above W (iteration)"]
  assert back.values == pytest.approx({0: 3250})
  assert back.left_out == {1: "none by step 4000", 2: "P diverged at step 2500"}
  assert math.isnan(back.summary.std) and back.summary.n == 1
  assert stats["wd objective: crossings by the last common step"].values == {0: 2, 1: 1}
  units = stats["active units (%) at 2000: P"]
  assert units.values == {0: 40.0, 1: 45.0, 2: 60.0} and units.left_out == {}
  assert stats["active units (%) at 3000: P"].left_out == {2: "P diverged at step 2500"}
  assert stats["active units (%) at 3000: W"].values == {0: 100.0, 1: 100.0, 2: 100.0}
  ratio = stats["wd objective P / W at 2000"]
  assert ratio.values == pytest.approx({0: 0.9, 1: 0.7, 2: 0.6})
  nowhere = seed_statistics.seed_statistics(pairs[:1], [9000], ("P", "W"))[3]
  assert nowhere.summary is None
  assert nowhere.left_out == {0: "P not there yet (step 4000)"}
