"""Runs configs/mnist_subset_mlp.py (`--help` lists the flags)."""

from experiments import cli

if __name__ == "__main__":
  cli.run("mnist_subset_mlp")
