"""Runs configs/mnist_mlp.py (`--help` lists the flags)."""

from experiments import cli

if __name__ == "__main__":
  cli.run("mnist_mlp")
