"""A model's size and inference speed, and the table that sets two models side by side.

Used by ``experiments.compact`` and ``experiments.prune`` to compare a model with its smaller
version.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

BENCHMARK_BATCHES = (1, 1000)


class Benchmark(NamedTuple):
  """A model's size and inference speed.

  Attributes:
    parameters: the number of scalars in its params.
    flops: FLOPs per example, from XLA's cost analysis of the jitted apply at
      batch 1 (None where the backend gives none).
    ms_per_call: batch size -> median wall time of one jitted call, in ms.
  """

  parameters: int
  flops: float | None
  ms_per_call: dict[int, float]


def benchmark(model, params: Any, x: np.ndarray, repeats: int, state: Any = None) -> Benchmark:
  """Counts, compiles and times ``model`` at each of :data:`BENCHMARK_BATCHES`.

  Args:
    model: the linen model.
    params: its parameters.
    x: model inputs, repeated to fill each batch.
    repeats: timed calls per batch size (after one warm-up call).
    state: its variables besides the params (a BatchNorm's running statistics; None: none).

  Returns:
    The :class:`Benchmark`.
  """
  params = jax.device_put(params)
  variables = {"params": params, **jax.device_put(state or {})}
  flops, ms = None, {}
  for batch in BENCHMARK_BATCHES:
    inputs = jax.device_put(np.resize(x, (batch, *x.shape[1:])))
    compiled = jax.jit(model.apply).lower(variables, inputs).compile()
    if batch == 1:
      flops = xla_flops(compiled)
    jax.block_until_ready(compiled(variables, inputs))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(variables, inputs))
      times.append(time.perf_counter() - start)
    ms[batch] = 1e3 * statistics.median(times)
  parameters = sum(int(np.size(p)) for p in jax.tree.leaves(params))
  return Benchmark(parameters, flops, ms)


def xla_flops(compiled: jax.stages.Compiled) -> float | None:
  """The FLOPs XLA's cost analysis counts for one call, or None if it gives none."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):  # older jax: one dict per program
    analysis = analysis[0] if analysis else None
  return analysis.get("flops") if analysis else None


def table_row(name: str, before: float | None, after: float | None, spec: str) -> str:
  """A row of :func:`print_table`: the name, both values (format ``spec``), after / before."""

  def cell(v):
    return f"{'n/a':>14}" if v is None else f"{v:>14{spec}}"

  ratio = f"{after / before:>10.3f}" if before and after is not None else f"{'n/a':>10}"
  return f"{name:<30}{cell(before)}{cell(after)}{ratio}"


def print_table(
  before: Benchmark,
  after: Benchmark,
  repeats: int,
  names: tuple[str, str] = ("sparse", "compact"),
  rows: Sequence[str] = (),
) -> None:
  """Prints two models' size and speed side by side, with the ratio after / before.

  Args:
    before: the original model's benchmark.
    after: the smaller model's.
    repeats: the timed calls per batch size (for the footnote).
    names: the two columns' headings.
    rows: further rows (:func:`table_row`), printed after the parameters and FLOPs.
  """
  print(f"{'':<30}{names[0]:>14}{names[1]:>14}{'ratio':>10}")
  print(table_row("parameters", before.parameters, after.parameters, ",d"))
  print(table_row("FLOPs / example (XLA)", before.flops, after.flops, ",.0f"))
  for row in rows:
    print(row)
  for batch in BENCHMARK_BATCHES:
    slow, fast = before.ms_per_call[batch], after.ms_per_call[batch]
    print(table_row(f"batch {batch:,}: ms / call", slow, fast, ".3f"))
    print(
      table_row(f"batch {batch:,}: examples / s", 1e3 * batch / slow, 1e3 * batch / fast, ",.0f")
    )
  print(
    "FLOPs: XLA's cost analysis of the jitted apply at batch 1. Times: median of "
    f"{repeats} jitted calls (after a warm-up) on {jax.devices()[0].device_kind}."
  )
