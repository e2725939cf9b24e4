"""Jitted train-step time with PathProx versus its baseline optimiser.

Prints the median step time of each and their ratio: ``pathprox_sgd`` against
``optax.sgd`` + weight decay for the factorised MNIST MLP (784-400-...-10, batch
200) and a VGG-style conv net at a small batch, and ``pathprox_adamw`` against
``optax.adamw`` (both with the kernel-rule decay mask) for the MLP and the
Fashion-MNIST ViT (4 blocks of 4 heads and 128 neurons, batch 128). The proximal
step is O(parameters) and the train step O(batch × parameters), so the ratio
should be close to 1 (goal: <= 1.05). Each ratio is the median of paired ratios: both steps
are compiled first, then each of ``--repeats`` rounds times ``--steps`` steps of each,
alternating which goes first, so that a loaded machine's drift hits each pair alike.

Then the step with a FLOPs budget (``pp.budget_sgd`` in its sparsify phase: the prox, the
kept fraction and the controller of lambda) against the plain ``pathprox_sgd`` step with the
same unit costs, interleaved the same way (goal: <= 1.05).

  python benchmarks/step_overhead.py [--steps 20] [--repeats 41] [--budget-only]
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import optax

import configs
import pathprox_jax as pp
from experiments import models

# optimiser: (baseline's name, baseline(lr, wd), PathProx's name, PathProx(lr, wd, groups, balance))
OPTIMIZERS = {
  "sgd": (
    "sgd+wd",
    lambda lr, wd: optax.chain(optax.add_decayed_weights(wd, mask=pp.kernel_mask), optax.sgd(lr)),
    "pathprox_sgd",
    pp.pathprox_sgd,
  ),
  "adamw": (
    "adamw",
    lambda lr, wd: optax.adamw(lr, weight_decay=wd, mask=pp.kernel_mask),
    "pathprox_adamw",
    pp.pathprox_adamw,
  ),
}


def make_step(model, tx):
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def network(experiment: str, **widths):
  """An experiment's model with other ``widths``, and its groups of boxed params (its family's)."""
  config = configs.load_config(experiment)
  config.update(widths)
  family = models.family(config)
  model = family.create(config)
  return model, lambda boxed: family.group_spec(model, boxed)


def _trainer(net, make_tx, x, y):
  """A function that runs ``n`` jitted steps of ``make_tx``'s optimiser and waits for them."""
  model, group_spec = net
  boxed = model.init(jax.random.key(0), x[:1])["params"]
  tx = make_tx(group_spec(boxed))
  step = make_step(model, tx)
  params = nn.meta.unbox(boxed)
  carry = [params, tx.init(params)]

  def run(n):
    for _ in range(n):
      carry[0], carry[1], loss = step(carry[0], carry[1], x, y)
    loss.block_until_ready()

  run(1)  # compile
  return run


def paired_ms(net, make_a, make_b, x, y, steps: int, repeats: int):
  """Median step times (ms) of two optimisers and the median of their paired ratios b/a.

  Both are compiled first; then each repeat times ``steps`` steps of one and of the other,
  alternating which goes first, so that the machine's load hits each pair alike.
  """
  runs = (_trainer(net, make_a, x, y), _trainer(net, make_b, x, y))
  times = ([], [])
  for r in range(repeats):
    for k in (0, 1) if r % 2 == 0 else (1, 0):
      start = time.perf_counter()
      runs[k](steps)
      times[k].append((time.perf_counter() - start) / steps * 1e3)
  ratios = [b / a for a, b in zip(*times, strict=True)]
  return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)


def print_costs(name, label, net, make_a, make_b, x, y):
  """XLA's own count of the two compiled steps' work (b/a), which the machine's load does not
  change: the FLOPs, and the bytes accessed (the passes over the parameters)."""
  model, group_spec = net
  boxed = model.init(jax.random.key(0), x[:1])["params"]
  params = nn.meta.unbox(boxed)
  costs = []
  for make_tx in (make_a, make_b):
    tx = make_tx(group_spec(boxed))
    compiled = make_step(model, tx).lower(params, tx.init(params), x, y).compile()
    costs.append(compiled.cost_analysis())
  a, b = costs
  print(
    f"{name:<38} XLA cost analysis, {label}: flops {b['flops'] / a['flops']:.3f}, "
    f"bytes accessed {b['bytes accessed'] / a['bytes accessed']:.3f}"
  )


def compare(name, net, x, y, steps, repeats, optimizer="sgd", lr=0.1, wd=1e-4, balance=True):
  base_name, base, prox_name, prox = OPTIMIZERS[optimizer]

  def make_base(groups):
    return base(lr, wd)

  def make_prox(groups):
    return prox(lr, wd, groups, balance=balance)

  print_costs(name, f"{prox_name}/{base_name}", net, make_base, make_prox, x, y)
  b, p, ratio = paired_ms(net, make_base, make_prox, x, y, steps, repeats)
  print(f"{name:<38} {base_name:<6} {b:8.3f} ms   {prox_name:<14} {p:8.3f} ms   ratio {ratio:.3f}")


def compare_budget(name, net, x, y, steps, repeats, lr=0.1, wd=1e-4, balance=True):
  """The budget's sparsify step against the plain PathProx step (SGD, momentum 0.9)."""
  model, group_spec = net
  boxed = model.init(jax.random.key(0), x[:1])["params"]
  costs = pp.unit_costs(
    lambda p, x: model.apply({"params": p}, x), nn.meta.unbox(boxed), x, groups=group_spec(boxed)
  )

  def plain(groups):
    return pp.pathprox_sgd(lr, wd, groups, momentum=0.9, balance=balance, unit_costs=costs)

  def budgeted(groups):  # sparsify for every step timed
    return pp.budget_sgd(
      lr, wd, groups, momentum=0.9, balance=balance, unit_costs=costs, target=0.5,
      prox_start=0, heal_start=10**9,
    )  # fmt: skip

  # XLA counts a lax.cond's branches as if both ran: the budget's zeroing of the base state,
  # which runs only at the freeze, in the heal and for GMP, is counted in its sparsify step.
  print_costs(name, "budget/plain", net, plain, budgeted, x, y)
  p, b, ratio = paired_ms(net, plain, budgeted, x, y, steps, repeats)
  print(f"{name:<38} {'pathprox_sgd':<12} {p:8.3f} ms   {'budget_sgd':<10} {b:8.3f} ms   "
        f"ratio {ratio:.3f}")  # fmt: skip


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=41)
  parser.add_argument("--budget-only", action="store_true", help="time only the budget's step")
  args = parser.parse_args()
  print(f"devices: {jax.devices()}")
  key = jax.random.key(1)
  mlp = network("mnist_mlp", relu=(True, False, True, False, True, False))
  mlp_x = jax.random.normal(key, (200, 28, 28, 1))
  mlp_y = jax.random.randint(key, (200,), 0, 10)
  vit = network("fashion_mnist_vit")
  vit_x = jax.random.normal(key, (128, 28, 28, 1))
  vit_y = jax.random.randint(key, (128,), 0, 10)
  vit_steps = max(args.steps // 5, 10)
  if not args.budget_only:
    compare("factorised MLP, batch 200", mlp, mlp_x, mlp_y, args.steps, args.repeats)
    compare(
      "factorised MLP, batch 200", mlp, mlp_x, mlp_y, args.steps, args.repeats, "adamw", lr=1e-3
    )
    compare(
      "ViT (4 blocks), batch 128", vit, vit_x, vit_y, vit_steps, args.repeats, "adamw", 1e-3,
      balance=False,
    )  # fmt: skip
    vgg = network("cifar_vgg", channels=(16, 16, 32, 32, 64, 64, 64, 64), pool_after=(1, 3))
    x = jax.random.normal(key, (16, 32, 32, 3))
    y = jax.random.randint(key, (16,), 0, 10)
    compare(
      "VGG-style conv net (8 convs), batch 16", vgg, x, y, max(args.steps // 5, 10), args.repeats
    )
  print("the step with a FLOPs budget (controller) against the plain PathProx step:")
  compare_budget("factorised MLP, batch 200", mlp, mlp_x, mlp_y, args.steps, args.repeats)
  compare_budget(
    "ViT (4 blocks), batch 128", vit, vit_x, vit_y, vit_steps, args.repeats, lr=1e-3,
    balance=False,
  )  # fmt: skip


if __name__ == "__main__":
  main()
