"""Seconds ``pp.discover_groups`` takes on the project's largest models: VGG-19 and the ViT.

Traces each model once (``jax.make_jaxpr`` of its ``apply`` on abstract parameters) and
prints the median seconds of a few calls; the goal is under 2 s each on 2 CPU cores.

  python benchmarks/discovery_time.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import pathprox_jax as pp
from configs import cifar_vgg
from experiments import models


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  config = cifar_vgg.get_config()
  for name, model, x in [
    ("vgg19", models.VGG(config.channels, config.pool_after), jnp.zeros((2, 32, 32, 3))),
    ("vit", models.ViT(num_heads=(4,) * 6, mlp_dim=(256,) * 6, width=64),
     jnp.zeros((2, 28, 28, 1))),
  ]:  # fmt: skip
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x)["params"])
    seconds = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      pp.discover_groups(model.apply, params, x)
      seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    print(f"discover_groups on {name:<6} {median:6.2f} s  (median of {args.repeats})")


if __name__ == "__main__":
  main()
