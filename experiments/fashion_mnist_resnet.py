"""Runs configs/fashion_mnist_resnet.py (`--help` lists the flags)."""

from experiments import cli

if __name__ == "__main__":
  cli.run("fashion_mnist_resnet")
