"""The optimiser's share of a training step, thunk by thunk, from a profile of the real loop.

Profiles the MNIST-subset training loop as the harness runs it (``experiment.Experiment.train``: a
while loop with one gradient all-reduce per step) for each method, in interleaved
rounds, and prints per method:

- the optimiser phase: from the end of a step's gradient all-reduce to the end of the
  last thunk that the forward and backward passes never run (the optimiser's thunks);
- the whole step (from one all-reduce to the next);
- the optimiser's thunks (XLA fusions), longest first.

Every figure is the minimum over all profiled steps, the one least disturbed by other
jobs on the machine. Weight decay updates each parameter in one pass (read params and
gradients, write params); PathProx needs the per-unit norms of the SGD step before it
can rescale, so it writes the step, reads it for the norms and rescales it into the
params (three passes), plus small thunks for the balance and the scales. On XLA:CPU
the while loop runs these thunks one after another on one thread.

  python benchmarks/optimizer_phase.py --raw-data-dir ../shared/data/mnist [--rounds 5]
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
from pathlib import Path

import jax
from jax.profiler import ProfileData

import configs
from experiments.experiment import Experiment

TRACEME_FLAG = "--xla_cpu_enable_xprof_traceme=true"


def thunk_events(trace_dir: str) -> list[tuple[int, int, str]]:
  """``(start ns, end ns, name)`` of every XLA thunk in a profile, in order of start."""
  path = next(Path(trace_dir).rglob("*.xplane.pb"))
  events = []
  for plane in ProfileData.from_file(str(path)).planes:
    for line in plane.lines:
      if line.name.startswith("tf_XLA"):
        events.extend(
          (ev.start_ns, ev.start_ns + ev.duration_ns, ev.name)
          for ev in line.events
          if "::" not in ev.name and not ev.name.startswith("end: ")
        )
  return sorted(events)


def optimizer_steps(events: list[tuple[int, int, str]]) -> list[tuple[int, int, dict[str, int]]]:
  """Per step: ``(phase ns, step ns, {optimiser thunk: ns})``.

  The gradient all-reduce is the longest-running all-reduce; the optimiser's thunks are
  those first run after the first step's all-reduce (the forward and backward passes and
  the loop's own thunks all run before it).
  """
  reduces = collections.Counter()
  for start, end, name in events:
    if name.startswith("all-reduce"):
      reduces[name] += end - start
  marks = [e for e in events if e[2] == reduces.most_common(1)[0][0]]
  seen_before = {name for start, _, name in events if start < marks[0][1]}
  steps = []
  for this, following in zip(marks, marks[1:], strict=False):
    thunks = [e for e in events if this[1] <= e[0] < following[0] and e[2] not in seen_before]
    phase = max(end for _, end, _ in thunks) - this[1]
    steps.append(
      (phase, following[0] - this[0], {name: end - start for start, end, name in thunks})
    )
  return steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=50, help="training steps per profiled stretch")
  parser.add_argument("--methods", default="wd,pathprox")
  parser.add_argument("--top", type=int, default=12, help="optimiser thunks listed per method")
  parser.add_argument("--data-dir", default="", help="TFDS data_dir")
  parser.add_argument("--raw-data-dir", default="", help="raw MNIST files to prepare from")
  args = parser.parse_args()
  # XLA reads its flags when the CPU client starts, at the first computation: not yet.
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TRACEME_FLAG}".strip()
  experiments, states = {}, {}
  for method in args.methods.split(","):
    config = configs.load_config("mnist_subset_mlp")
    config.method, config.data_dir, config.raw_data_dir = method, args.data_dir, args.raw_data_dir
    experiment = experiments[method] = Experiment([config])
    key = experiment.device_keys(experiment.data_keys)
    state, loss = experiment.train(
      experiment.to_device(experiment.stack(experiment.states)), args.steps, key
    )
    loss.block_until_ready()  # compile and warm up
    states[method] = (state, key)
  print(
    f"jax {jax.__version__} on {jax.device_count()} x {jax.devices()[0].platform}; "
    f"{args.rounds} rounds of {args.steps} steps"
  )

  steps = {method: [] for method in experiments}
  for _ in range(args.rounds):
    for method, experiment in experiments.items():
      state, key = states[method]
      with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
          state, loss = experiment.train(state, args.steps, key)
          loss.block_until_ready()
        steps[method].extend(optimizer_steps(thunk_events(trace_dir)))
      states[method] = (state, key)

  phase = {method: min(p for p, _, _ in s) / 1e3 for method, s in steps.items()}
  print(f"{'min over steps':<16}{'optimiser phase':>18}{'step':>12}{'thunks':>9}")
  for method, s in steps.items():
    thunks = collections.defaultdict(list)
    for _, _, durations in s:
      for name, ns in durations.items():
        thunks[name].append(ns / 1e3)
    step_ms = min(t for _, t, _ in s) / 1e6
    print(f"{method:<16}{phase[method]:>15.0f} us{step_ms:>9.2f} ms{len(thunks):>9}")
    longest = sorted(((min(t), name) for name, t in thunks.items()), reverse=True)
    print("  " + ", ".join(f"{name} {us:.0f}" for us, name in longest[: args.top]) + " (us)")
    small = [us for us, _ in longest if us < 2.0]
    print(f"  {len(small)} thunks under 2 us: {sum(small):.0f} us together")
  if {"wd", "pathprox"} <= phase.keys():
    print(
      f"PathProx's optimiser phase: {phase['pathprox'] / phase['wd']:.2f}x weight decay's, "
      f"{phase['pathprox'] - phase['wd']:.0f} us more per step"
    )


if __name__ == "__main__":
  main()
