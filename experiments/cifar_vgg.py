"""Runs configs/cifar_vgg.py (`--help` lists the flags)."""

from experiments import cli

if __name__ == "__main__":
  cli.run("cifar_vgg")
