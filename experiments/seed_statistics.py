"""Statistics over seeds of two sweeps trained on the same seeds, computed pair by pair.

Members of two sweeps (say PathProx and weight decay) with the same seed start from
the same initialisation and see the same batches, so they form a pair; every statistic
here is computed on each pair, then summarised over the seeds as mean ± sample standard
deviation (min–max) with the number of seeds ``n`` it was computed on:

* where the weight-decay objectives cross (:func:`crossings`): the first step at which
  the first run gets below the second, the first later step at which it gets back
  above it, and how many times they cross;
* each run's active units (%) and test accuracy at chosen iterations, and the ratio of
  the objectives (first / second) there.

A member that diverged (:attr:`run_folder.Run.diverged_at`) is left out of every point
it did not reach, and every statistic names the seeds it left out and why.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from typing import NamedTuple

from experiments import run_folder

OBJECTIVE = "wd_objective"


class Crossing(NamedTuple):
  """A step where the sign of ``first − second`` changes.

  Attributes:
    step: the step, linearly interpolated between the evaluations around it.
    downward: whether ``first`` goes from above ``second`` to below it.
  """

  step: float
  downward: bool


def crossings(
  steps: Sequence[float], first: Sequence[float], second: Sequence[float]
) -> list[Crossing]:
  """Every step where the sign of ``first − second`` changes, in order.

  Between evaluations at steps :math:`s_0 < s_1` with differences :math:`d_0` and
  :math:`d_1` of opposite signs, both curves are taken as straight lines, so they
  cross at

  .. math:: s = s_0 + (s_1 - s_0) \\frac{d_0}{d_0 - d_1}.

  A difference of exactly 0 between opposite signs is the crossing itself (its first
  step); touching 0 and going back to the same sign, or starting equal (as runs from
  one initialisation do at step 0), is none. Evaluations where either value is not
  finite are skipped.

  Args:
    steps: the evaluation steps, increasing.
    first: the first curve's values at ``steps``.
    second: the second curve's values at ``steps``.

  Returns:
    The crossings, by step.

  Example:
    >>> crossings([6000, 7000], [2.0, 1.0], [1.5, 1.5])
    [Crossing(step=6500.0, downward=True)]
  """
  found = []
  previous: tuple[float, float] | None = None  # the last (step, difference) that was not 0
  zero_from: float | None = None  # the first step of the zeros since then
  for step, a, b in zip(steps, first, second, strict=True):
    if not (math.isfinite(a) and math.isfinite(b)):
      continue
    difference = a - b
    if difference == 0:
      zero_from = step if zero_from is None else zero_from
      continue
    if previous is not None and (previous[1] > 0) != (difference > 0):
      s0, d0 = previous
      at = zero_from if zero_from is not None else s0 + (step - s0) * d0 / (d0 - difference)
      found.append(Crossing(float(at), downward=difference < 0))
    previous, zero_from = (step, difference), None
  return found


class Pair(NamedTuple):
  """The two runs trained on one seed."""

  seed: int
  first: run_folder.Run
  second: run_folder.Run

  @property
  def runs(self) -> tuple[run_folder.Run, run_folder.Run]:
    """``(first, second)``."""
    return self.first, self.second


class Pairing(NamedTuple):
  """Two sweeps' members matched by seed.

  Attributes:
    pairs: a pair for each seed both sweeps ran, by seed.
    only_first: seeds only the first sweep ran.
    only_second: seeds only the second sweep ran.
  """

  pairs: list[Pair]
  only_first: list[int]
  only_second: list[int]


def pair_by_seed(first: Sequence[run_folder.Run], second: Sequence[run_folder.Run]) -> Pairing:
  """Matches two sweeps' members by their config's ``seed`` (runs without one match none)."""
  by_seed = [{run.seed: run for run in runs if run.seed is not None} for runs in (first, second)]
  return Pairing(
    [Pair(s, by_seed[0][s], by_seed[1][s]) for s in sorted(by_seed[0].keys() & by_seed[1])],
    sorted(by_seed[0].keys() - by_seed[1].keys()),
    sorted(by_seed[1].keys() - by_seed[0].keys()),
  )


class Summary(NamedTuple):
  """A statistic over seeds: mean, sample standard deviation (NaN for one seed), min, max, n."""

  mean: float
  std: float
  low: float
  high: float
  n: int


@dataclasses.dataclass(frozen=True)
class SeedStatistic:
  """One quantity measured on each pair of runs.

  Attributes:
    name: what is measured, as the report names it.
    key: what its values are, which says how to format them: ``"step"``,
      ``"count"``, ``"ratio"`` or a metrics key (``"active_units_pct"``, ``"test_acc"``).
    values: the value of each seed that has one.
    left_out: for each seed without a value, why.
  """

  name: str
  key: str
  values: dict[int, float]
  left_out: dict[int, str]

  @property
  def summary(self) -> Summary | None:
    """The values' mean, sample std, min, max and count; ``None`` if no seed has one."""
    values = list(self.values.values())
    if not values:
      return None
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return Summary(statistics.fmean(values), std, min(values), max(values), len(values))


def seed_statistics(
  pairs: Sequence[Pair], at: Sequence[int], names: tuple[str, str]
) -> list[SeedStatistic]:
  """Where the objectives cross, then active units, objective ratio and test accuracy at ``at``.

  Args:
    pairs: the runs paired by seed (:func:`pair_by_seed`).
    at: the iterations at which to compare the runs; a run's value there is the row
      logged there, else the last one before it (as in the report's table). A run
      that has not reached an iteration, or diverged at or before it, is left out
      of it.
    names: the two sweeps' names, for the statistics' names and the reasons.

  Returns:
    The statistics: the step at which the first run's objective first gets below
    the second's, the first step after that at which it gets back above, and the
    number of crossings (left out where a divergence ended the search); then for
    each iteration of ``at`` each run's active units (%), the objective ratio
    first / second, and each run's test accuracy.
  """
  first, second = names
  searched = {pair.seed: _crossing_measures(pair, names) for pair in pairs}
  result = [
    _measured(name, key, pairs, lambda pair, i=i: searched[pair.seed][i])
    for i, (name, key) in enumerate(
      [
        (f"wd objective: {first} first below {second} (iteration)", "step"),
        (f"wd objective: {first} back above {second} (iteration)", "step"),
        ("wd objective: crossings by the last common step", "count"),
      ]
    )
  ]
  for step in at:
    result += [
      _at(f"active units (%) at {step}: {first}", "active_units_pct", pairs, names, step, (0,)),
      _at(f"active units (%) at {step}: {second}", "active_units_pct", pairs, names, step, (1,)),
      _at(f"wd objective {first} / {second} at {step}", "ratio", pairs, names, step, (0, 1)),
      _at(f"test acc (%) at {step}: {first}", "test_acc", pairs, names, step, (0,)),
      _at(f"test acc (%) at {step}: {second}", "test_acc", pairs, names, step, (1,)),
    ]
  return result


def _measured(
  name: str, key: str, pairs: Sequence[Pair], measure: Callable[[Pair], float | str]
) -> SeedStatistic:
  """``measure`` of each pair: its value, or (a string) why it has none."""
  values, left_out = {}, {}
  for pair in pairs:
    result = measure(pair)
    if isinstance(result, str):
      left_out[pair.seed] = result
    elif not math.isfinite(result):
      left_out[pair.seed] = f"{result} is not finite"
    else:
      values[pair.seed] = float(result)
  return SeedStatistic(name, key, values, left_out)


def _crossing_measures(
  pair: Pair, names: tuple[str, str]
) -> tuple[float | str, float | str, float | str]:
  """The pair's first downward crossing, the first crossing after it, and how many there are.

  The objectives are compared at the steps both runs logged; the search ends at a run's
  divergence (the count is then left out), else at the last of those steps. Each one
  not found is why instead (the divergence, or ``none by step S``).
  """
  steps, (first, second) = run_folder.common_curve(pair.runs, OBJECTIVE)
  found = crossings(steps.tolist(), first.tolist(), second.tolist())
  end = int(steps[-1]) if len(steps) else 0
  diverged = ", ".join(
    f"{name} diverged at step {run.diverged_at}"
    for name, run in zip(names, pair.runs, strict=True)
    if run.diverged_at is not None and run.last_step <= end
  )
  why, count = diverged or f"none by step {end}", diverged or len(found)
  below = next((c.step for c in found if c.downward), None)
  if below is None:
    return why, why, count
  return below, next((c.step for c in found if c.step > below), why), count


def _at(
  name: str,
  key: str,
  pairs: Sequence[Pair],
  names: tuple[str, str],
  step: int,
  which: tuple[int, ...],
) -> SeedStatistic:
  """``key`` of run ``which`` at ``step`` (``"ratio"``: the objective of run 0 / run 1)."""

  def measure(pair: Pair) -> float | str:
    rows, reasons = [], []
    for i in which:
      run, run_name = pair.runs[i], names[i]
      if run.diverged_at is not None and run.diverged_at <= step:
        reasons.append(f"{run_name} diverged at step {run.diverged_at}")
      elif (row := run.row_at(step)) is None:
        reasons.append(f"{run_name} not there yet (step {run.last_step})")
      else:
        rows.append(row)
    if reasons:
      return ", ".join(reasons)
    if key == "ratio":
      objective, baseline = (run_folder.metric(row, OBJECTIVE) for row in rows)
      return objective / baseline if baseline else math.nan
    return run_folder.metric(rows[0], key)

  return _measured(name, key, pairs, measure)
