"""Training throughput of ``mnist_subset_mlp``: step time, evaluation time, run time per 1k.

Prints ms per training step (evaluation excluded, median of several stretches
of steps run as the harness runs them), seconds per full evaluation pass (the
1k training, 59k validation and 10k test images, plus the PathProx metrics),
and the wall time of the whole run per 1,000 iterations with an evaluation
every ``log_freq`` steps.

  PATHPROX_RAW_DATA_DIR=../shared/data/mnist python benchmarks/train_throughput.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax

import configs
from experiments import train
from experiments.experiment import Experiment


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000, help="steps per timed stretch")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--method", default="pathprox")
  parser.add_argument("--data-dir", default="")
  parser.add_argument("--run-iters", type=int, default=10_000, help="iterations of the timed run")
  args = parser.parse_args()
  config = configs.load_config("mnist_subset_mlp")
  config.method, config.data_dir = args.method, args.data_dir
  experiment = Experiment([config])
  print(f"devices: {experiment.mesh.size} x {jax.devices()[0].platform}, method {config.method}")

  state = experiment.to_device(experiment.stack(experiment.states))
  key = experiment.device_keys(experiment.data_keys)
  state, loss = experiment.train(state, args.steps, key)  # compile and warm up
  loss.block_until_ready()
  step_ms = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    state, loss = experiment.train(state, args.steps, key)
    loss.block_until_ready()
    step_ms.append((time.perf_counter() - start) / args.steps * 1e3)

  params = experiment.from_device(state).params
  experiment.evaluate(params)  # compile
  eval_s = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    experiment.evaluate(params)
    eval_s.append(time.perf_counter() - start)

  step, eval_ = statistics.median(step_ms), statistics.median(eval_s)
  per_1k = step + eval_ * 1000 / config.log_freq
  print(f"train step        {step:8.2f} ms  (median of {args.repeats} x {args.steps} steps)")
  print(f"evaluation pass   {eval_:8.3f} s   (1k train + 59k val + 10k test, median)")
  print(f"run per 1k iter   {per_1k:8.2f} s   (1,000 steps + evaluation every {config.log_freq})")

  config.total_iter, config.progress = args.run_iters, False
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
  print(
    f"whole run         {wall / args.run_iters * 1000:8.2f} s   per 1k iterations "
    f"({args.run_iters} iterations, data loading, compilation and checkpoints included)"
  )


if __name__ == "__main__":
  main()
