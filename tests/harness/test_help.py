"""The command lines' help: every flag described once, without importing JAX."""

import subprocess
import sys

import pytest
from conftest import REPO

import configs
from experiments import compare, config_checks


def help_text(*command):
  """``--help`` of a module, and whether it imported JAX."""
  code = (
    "import runpy, sys\n"
    f"sys.argv = ['x', *{list(command[1:])!r}, '--help']\n"
    f"try: runpy.run_module({command[0]!r}, run_name='__main__')\n"
    "except SystemExit: pass\n"
    "print('JAX IMPORTED' if 'jax' in sys.modules else 'NO JAX')\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
  )
  return result.stdout


@pytest.mark.parametrize(
  "experiment, hidden",
  [
    ("mnist_mlp", ("--channels", "--pool-after", "--train-per-class", "--scale-l1")),
    ("mnist_subset_mlp", ("--channels", "--pool-after", "--val-size", "--scale-l1")),
    ("cifar_vgg", ("--features", "--relu", "--train-per-class", "--scale-l1")),
  ],  # fmt: skip
)
def test_help_describes_each_flag_once_without_jax(experiment, hidden):
  text = help_text(f"experiments.{experiment}")
  assert text.rstrip().endswith("NO JAX")
  options = text[text.index("options:") :]
  config = configs.load_config(experiment)
  for key in config:
    shown = f"  {config_checks.flag(key)} "
    if key == "experiment" or config_checks.flag(key) in hidden:
      assert shown not in options
      continue
    assert options.count(shown) == 1, key
    description = options.split(shown)[1].split("(default:")[0]
    assert len(description.split()) >= 3, key  # a description, not only the metavar
  assert "--batch_size" not in options


def test_compare_help_lists_the_pass_through_flags():
  text = help_text("experiments.compare", "mnist_mlp")
  assert "flags of mnist_mlp, passed to both runs" in text and "  --lr FLOAT " in text
  assert "  --method " not in text and text.rstrip().endswith("NO JAX")
  listed = " ".join(help_text("experiments.compare").split())
  assert (
    "one of cifar_vgg, fashion_mnist_resnet, fashion_mnist_vit, fashion_mnist_vit_adamw, "
    "mnist_mlp, mnist_subset_mlp" in listed
  )


def test_compare_refuses_method_and_unknown_flags(capsys, tmp_path):
  assert compare.main(["mnist_mlp", "--workdir", str(tmp_path), "--method", "wd"]) == 2
  assert compare.main(["mnist_mlp", "--workdir", str(tmp_path), "--bogus", "1"]) == 2
  assert capsys.readouterr().err.count("error: ") == 2 and not list(tmp_path.iterdir())
