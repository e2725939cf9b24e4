"""This project against an independent PyTorch implementation, side by side on one CPU.

The MNIST-subset factorised MLP (784-400-400-400-400-400-10, batch 200): the
training step of PathProx and of the weight-decay baseline, and the evaluation
pass (1k train + 59k validation + 10k test images: loss, accuracy, path norm,
active units). The harness's evaluation multiplies out the model's linear
bottlenecks (:func:`experiments.mlp.fold_linear_layers`), a third fewer
products; the layer-by-layer evaluation, the same products as PyTorch's, is
timed beside it. The PyTorch side is written here with torch ops only: PyTorch's
default init, ``torch.optim.SGD``, then the layer balance, the normalisation of
each unit's input weights and the group soft-threshold of its output weights;
the data lives in memory as tensors, so no DataLoader cost is counted.

Both run in one process, in interleaved rounds (so machine noise hits both
alike), PyTorch at ``--threads`` threads and XLA on all host devices' threads.
Printed: medians over the rounds, the per-round ratios' median and spread, and
each figure as a fraction of the matmul roofline: the time that framework takes
for the same matrix products alone (measured here, at the same shapes), which
moves less from machine to machine than absolute times do.

  pip install -e ".[bench]"
  python benchmarks/vs_pytorch.py --raw-data-dir ../shared/data/mnist [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np
import torch
import torch.nn.functional as F

import configs
from experiments import dataset_facts, evaluation, models
from experiments.experiment import Experiment

MEAN, STD = dataset_facts.DATASETS["mnist"].mean, dataset_facts.DATASETS["mnist"].std


# ---------------------------------------------------------------- PyTorch side


def torch_model(features, relu, seed: int) -> torch.nn.Sequential:
  """The MLP with PyTorch's default ``nn.Linear`` init."""
  torch.manual_seed(seed)
  layers, width = [torch.nn.Flatten()], 784
  for out, has_relu in zip(features, relu, strict=True):
    layers.append(torch.nn.Linear(width, out))
    if has_relu:
      layers.append(torch.nn.ReLU())
    width = out
  return torch.nn.Sequential(*layers)


def linears(model: torch.nn.Sequential) -> list[torch.nn.Linear]:
  return [m for m in model if isinstance(m, torch.nn.Linear)]


@torch.no_grad()
def torch_prox(model: torch.nn.Sequential, threshold: float, eps: float = 1e-6) -> None:
  """Balance, normalise inputs, soft-threshold outputs; groups are layer pairs (2k, 2k+1).

  ``nn.Linear.weight`` is ``[out, in]``: unit ``i`` of a group is row ``i`` of the
  "in" layer's weight and column ``i`` of the "out" layer's.
  """
  layers = linears(model)
  pairs = [(layers[2 * k], layers[2 * k + 1]) for k in range(len(layers) // 2)]
  w_norms = [w.weight.norm(dim=1) for w, _ in pairs]
  v_norms = [v.weight.norm(dim=0) for _, v in pairs]
  path_norms = torch.stack([(nw * nv).sum() for nw, nv in zip(w_norms, v_norms, strict=True)])
  finite = (path_norms > eps).all()
  log_p = torch.where(finite, path_norms, torch.ones_like(path_norms)).log()
  alpha = torch.cumsum(log_p.mean() - log_p, 0).exp()
  alpha[-1] = 1.0
  alpha = torch.where(finite, alpha, torch.ones_like(alpha))
  prev = torch.cat([alpha.new_ones(1), alpha[:-1]])
  for k, (w, v) in enumerate(pairs):
    inv_norm = 1.0 / w_norms[k].clamp_min(eps)
    w.weight.mul_(inv_norm[:, None])
    w.bias.mul_(inv_norm * prev[k])
    ratio = alpha[k] / prev[k]
    shrink = (1.0 - threshold / (v_norms[k] * ratio).clamp_min(eps)).clamp_min(0.0)
    v.weight.mul_((shrink * ratio)[None, :])
    v.bias.mul_(alpha[k])


class TorchTraining:
  """The training loop: a fresh permutation per epoch, SGD, then the prox (PathProx)."""

  def __init__(self, config, images: np.ndarray, labels: np.ndarray):
    self.model = torch_model(config.features, config.relu, config.seed)
    self.x = normalized(images)
    self.y = torch.from_numpy(labels.astype(np.int64))
    self.batch, self.method = config.batch_size, config.method
    self.lr, self.weight_decay = config.lr, config.weight_decay
    kernels = [m.weight for m in linears(self.model)]
    biases = [m.bias for m in linears(self.model)]
    decay = 0.0 if config.method == "pathprox" else config.weight_decay
    self.optimizer = torch.optim.SGD(
      [{"params": kernels, "weight_decay": decay}, {"params": biases, "weight_decay": 0.0}],
      lr=config.lr,
    )
    self.generator = torch.Generator().manual_seed(config.seed)
    self.order, self.position = None, len(self.y)

  def step(self) -> torch.Tensor:
    if self.position >= len(self.y):
      self.order, self.position = torch.randperm(len(self.y), generator=self.generator), 0
    idx = self.order[self.position : self.position + self.batch]
    self.position += self.batch
    loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    if self.method == "pathprox":
      torch_prox(self.model, self.weight_decay * self.lr)
    return loss

  def run(self, steps: int) -> float:
    for _ in range(steps):
      loss = self.step()
    return float(loss.detach())


def normalized(images: np.ndarray) -> torch.Tensor:
  return (torch.from_numpy(images).float().flatten(1) / 255.0 - MEAN[0]) / STD[0]


class TorchEvaluation:
  """The evaluation pass: loss and accuracy per split, path norm and active units."""

  def __init__(self, splits, batch_size: int):
    self.splits = {
      name: (normalized(x), torch.from_numpy(y.astype(np.int64))) for name, (x, y) in splits.items()
    }
    self.batch_size = batch_size

  @torch.inference_mode()
  def __call__(self, model: torch.nn.Sequential) -> dict[str, float]:
    out = {}
    for name, (x, y) in self.splits.items():
      loss = correct = 0.0
      for start in range(0, len(y), self.batch_size):
        logits = model(x[start : start + self.batch_size])
        target = y[start : start + self.batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(-1) == target).sum()
      out[f"{name}_loss"], out[f"{name}_acc"] = float(loss) / len(y), float(correct) / len(y)
    layers = linears(model)
    units = torch.cat(
      [
        layers[2 * k].weight.norm(dim=1) * layers[2 * k + 1].weight.norm(dim=0)
        for k in range(len(layers) // 2)
      ]
    )
    out["path_norm"], out["active_units"] = float(units.sum()), int((units > 0).sum())
    return out


def load_into_torch(model: torch.nn.Sequential, params) -> None:
  """Copies flax Dense params (kernel ``[in, out]``) into the torch MLP."""
  with torch.no_grad():
    for i, layer in enumerate(linears(model)):
      layer.weight.copy_(torch.from_numpy(np.array(params[f"Dense_{i}"]["kernel"]).T))
      layer.bias.copy_(torch.from_numpy(np.array(params[f"Dense_{i}"]["bias"])))


# ---------------------------------------------------------------- matmul roofline


def step_matmuls(widths: list[int], batch: int) -> list[tuple[int, int, int]]:
  """``(m, k, n)`` of every product in one training step: forward, dW, and dX but the first."""
  layers = list(zip(widths[:-1], widths[1:], strict=True))
  forward = [(batch, i, o) for i, o in layers]
  d_weights = [(i, batch, o) for i, o in layers]
  d_inputs = [(batch, o, i) for i, o in layers[1:]]
  return forward + d_weights + d_inputs


def eval_matmuls(widths: list[int], batches: list[int]) -> list[tuple[int, int, int]]:
  return [(b, i, o) for b in batches for i, o in zip(widths[:-1], widths[1:], strict=True)]


def flops(shapes) -> float:
  return sum(2.0 * m * k * n for m, k, n in shapes)


def xla_matmul_time(shapes, repeats: int) -> float:
  """Seconds XLA takes for these products alone, in one compiled program (best of repeats)."""
  key = jax.random.key(0)
  operands = [
    (jax.random.normal(key, (m, k)), jax.random.normal(key, (k, n))) for m, k, n in shapes
  ]
  products = jax.jit(lambda ops: [a @ b for a, b in ops])
  jax.block_until_ready(products(operands))
  return best_time(lambda: jax.block_until_ready(products(operands)), repeats)


def torch_matmul_time(shapes, repeats: int) -> float:
  """Seconds PyTorch takes for these products alone (best of repeats)."""
  operands = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)) for m, k, n in shapes]

  def products():
    for a, b, c in operands:
      torch.mm(a, b, out=c)

  products()
  return best_time(products, repeats)


def best_time(fn: Callable[[], object], repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


# ---------------------------------------------------------------- the comparison


def timed(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=300, help="training steps per timed stretch")
  parser.add_argument("--threads", type=int, default=2, help="PyTorch's intra-op threads")
  parser.add_argument("--methods", default="pathprox,wd")
  parser.add_argument("--data-dir", default="", help="TFDS data_dir")
  parser.add_argument("--raw-data-dir", default="", help="raw MNIST files to prepare from")
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  torch.set_grad_enabled(True)

  experiments, torch_runs = {}, {}
  for method in args.methods.split(","):
    config = configs.load_config("mnist_subset_mlp")
    config.method, config.data_dir, config.raw_data_dir = method, args.data_dir, args.raw_data_dir
    experiments[method] = experiment = Experiment([config])
    torch_runs[method] = TorchTraining(config, *experiment.splits["train"])
  experiment = experiments[next(iter(experiments))]
  config = experiment.configs[0]
  print(
    f"jax {jax.__version__} on {experiment.mesh.size} x {jax.devices()[0].platform}; "
    f"torch {torch.__version__} at {torch.get_num_threads()} threads; "
    f"{args.rounds} rounds of {args.steps} steps"
  )

  # Same numbers: the evaluations of the same parameters. The harness's folds the
  # factorised MLP's linear bottlenecks; the layer-by-layer one is timed beside it.
  layer_by_layer = evaluation.Evaluator(
    models.create_model(config),
    config,
    experiment.splits,
    experiment.groups,
    experiment.mesh,
    fold_linear_layers=False,
  )
  evaluators = {"eval": experiment.evaluate, "eval layer by layer": layer_by_layer}
  torch_eval = TorchEvaluation(experiment.splits, config.eval_batch_size)
  params = experiment.states[0].params
  load_into_torch(torch_runs[next(iter(torch_runs))].model, params)
  theirs = torch_eval(torch_runs[next(iter(torch_runs))].model)
  for name, evaluate in evaluators.items():
    ours = evaluate(params)
    worst = max(abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-12) for k in theirs)
    print(f"{name} vs torch, same params: largest relative difference {worst:.1e}")
  print(f"  over {sorted(theirs)}")

  jax_state = {m: e.to_device(e.stack(e.states)) for m, e in experiments.items()}
  keys = {m: e.device_keys(e.data_keys) for m, e in experiments.items()}

  def jax_steps(method):
    def go():
      state, loss = experiments[method].train(jax_state[method], args.steps, keys[method])
      loss.block_until_ready()
      jax_state[method] = state

    return go

  for method in experiments:  # compile and warm up
    jax_steps(method)()
    torch_runs[method].run(10)
  # A host copy: the device state is donated to the next training stretch.
  host_params = jax.device_get(experiment.from_device(jax_state[next(iter(experiments))]).params)
  for evaluate in evaluators.values():
    evaluate(host_params)
  first_torch = torch_runs[next(iter(torch_runs))].model
  torch_eval(first_torch)

  times = {name: [] for name in (*evaluators, *experiments)}
  torch_times = {name: [] for name in times}
  for _ in range(args.rounds):
    for method in experiments:
      times[method].append(timed(jax_steps(method)) / args.steps)
      torch_times[method].append(timed(lambda m=method: torch_runs[m].run(args.steps)) / args.steps)
    for name, evaluate in evaluators.items():
      times[name].append(timed(lambda e=evaluate: e(host_params)))
      torch_times[name].append(timed(lambda: torch_eval(first_torch)))
    print(
      "round: " + ", ".join(f"{k} {t[-1] / times[k][-1]:.2f}x" for k, t in torch_times.items()),
      flush=True,
    )

  widths = [784, *config.features]
  folded = [784, *models.fold_linear_layers(models.create_model(config), params)[0].features]
  sizes = [len(labels) for _, labels in experiment.splits.values()]
  torch_batches = [min(b, n - s) for n in sizes for b in [config.eval_batch_size]
                   for s in range(0, n, b)]  # fmt: skip
  # Ours: each split in even batches, padded to whole device shares (as the Evaluator runs it).
  our_batches = [b for n in sizes for b in [evaluation.eval_batch_size(
    n, config.eval_batch_size, experiment.mesh.size)] for _ in range(-(-n // b))]  # fmt: skip
  torch_eval_shapes = eval_matmuls(widths, torch_batches)
  layer_shapes, folded_shapes = eval_matmuls(widths, our_batches), eval_matmuls(folded, our_batches)
  step_shapes = step_matmuls(widths, config.batch_size)
  torch_eval = torch_matmul_time(torch_eval_shapes, 5)
  roofline = {  # (ours, torch's) for each timed figure: the products that each one computes
    "eval": (xla_matmul_time(folded_shapes, 5), torch_eval),
    "eval layer by layer": (xla_matmul_time(layer_shapes, 5), torch_eval),
    "step": (xla_matmul_time(step_shapes, 5), torch_matmul_time(step_shapes, 5)),
  }
  print(
    "matmul roofline (the products alone):  "
    + "   ".join(
      f"{name} XLA {flops(ours) / roofline[name][0] / 1e9:.0f} GFLOP/s, "
      f"torch {flops(theirs) / roofline[name][1] / 1e9:.0f} GFLOP/s"
      for name, ours, theirs in (
        ("eval layer by layer", layer_shapes, torch_eval_shapes),
        ("step", step_shapes, step_shapes),
      )
    )
  )
  print(
    f"the harness's evaluation folds the linear bottlenecks: {flops(layer_shapes) / 1e9:.0f} "
    f"GFLOP layer by layer, {flops(folded_shapes) / 1e9:.0f} folded"
  )
  header = ("PyTorch", "this project", "speed-up (spread)", "of roofline: torch / ours")
  print(f"{'':32}{header[0]:>12}{header[1]:>15}{header[2]:>22}{header[3]:>29}")
  for name in times:
    ours_t, theirs_t = statistics.median(times[name]), statistics.median(torch_times[name])
    ratios = [t / o for o, t in zip(times[name], torch_times[name], strict=True)]
    kind = name if name.startswith("eval") else "step"
    label = name.replace("eval", "evaluation pass") if kind != "step" else f"{name} training step"
    unit, scale = ("s", 1) if kind != "step" else ("ms", 1e3)
    print(
      f"{label:<32}{theirs_t * scale:>9.3f} {unit:<2}{ours_t * scale:>12.3f} {unit:<2}"
      f"{statistics.median(ratios):>11.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
      f"{roofline[kind][1] / theirs_t:>16.0%} / {roofline[kind][0] / ours_t:.0%}"
    )


if __name__ == "__main__":
  main()
