"""The evaluation pass: exact on any device count, and the weight-decay terms it reports."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import flags, read_rows
from test_experiments import restore_params

import pathprox_jax as pp
from experiments import cli, evaluation, models

# One xdist worker runs this file (--dist loadgroup): one_device is compiled once.
pytestmark = pytest.mark.xdist_group("evaluation")

FEATURES = (16, 16, 16, 16, 10)  # an unpaired last layer: ordinary weight decay on it


def make_evaluator(num_devices, eval_batch_size=64):
  config = ml_collections.ConfigDict(
    {
      "dataset": "mnist",
      "model": "mlp",
      "weight_decay": 1e-3,
      "eval_batch_size": eval_batch_size,
      "regularize_bias": False,
      "target_flops": 0.0,
    }
  )
  model = models.MLP(FEATURES, (True, False, True, False, False))
  boxed = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  rng = np.random.default_rng(0)
  # Sizes that divide neither by the batch nor by the device count.
  splits = {
    name: (rng.integers(0, 256, (n, 28, 28, 1), np.uint8), rng.integers(0, 10, n).astype(np.int32))
    for name, n in (("train", 101), ("val", 257), ("test", 50))
  }
  mesh = jax.make_mesh(
    (num_devices,),
    ("data",),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=jax.devices()[:num_devices],
  )
  evaluator = evaluation.Evaluator(model, config, splits, pp.group_spec(boxed), mesh)
  return evaluator, nn.meta.unbox(boxed), splits, model


@pytest.fixture(scope="module")
def one_device():
  """``(params, splits, model, metrics)`` of the evaluator on one device, compiled and run once."""
  evaluator, params, splits, model = make_evaluator(1)
  return params, splits, model, evaluator(params)


def test_three_devices_give_the_single_device_metrics(one_device):
  params, splits, model, expected = one_device
  three, _, _, _ = make_evaluator(3)
  got = three(params)
  assert expected.keys() == got.keys()
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=key)
  # And both are the plain mean over every example of each split: no padding counted.
  images, labels = splits["val"]
  x = (images.astype(np.float32) / 255 - 0.1307) / 0.3081
  logits = np.asarray(model.apply({"params": params}, x))
  np.testing.assert_allclose(got["val_acc"], np.mean(logits.argmax(-1) == labels), rtol=1e-6)
  # The evaluation folds the linear bottlenecks; the loss is the layer-by-layer model's.
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(got["val_loss"], np.mean(loss), rtol=1e-5)


@pytest.mark.parametrize(
  ("num_examples", "max_batch", "devices", "expected"),
  [(1000, 10_000, 1, 1000), (1000, 10_000, 3, 1002), (59_000, 10_000, 8, 9840), (50, 64, 8, 56)],
)
def test_eval_batch_size_covers_the_split_with_whole_device_shares(
  num_examples, max_batch, devices, expected
):
  size = evaluation.eval_batch_size(num_examples, max_batch, devices)
  assert size == expected
  assert size % devices == 0
  assert size < max_batch + devices


def test_raw_penalty_decays_every_kernel_and_no_bias(one_device):
  params, _, _, metrics = one_device
  kernels = [params[f"Dense_{i}"]["kernel"] for i in range(len(FEATURES))]
  penalty = 0.5 * 1e-3 * sum(float(np.sum(np.square(k))) for k in kernels)
  np.testing.assert_allclose(pp.weight_decay_penalty(params, 1e-3), penalty, rtol=1e-6)
  np.testing.assert_allclose(metrics["wd_penalty"], penalty, rtol=1e-6)
  np.testing.assert_allclose(
    metrics["wd_raw_objective"], metrics["train_loss"] + penalty, rtol=1e-6
  )
  # Balanced rescaling can only lower the weight-decay term: (a² + b²)/2 ≥ ab.
  assert metrics["wd_objective"] <= metrics["wd_raw_objective"]


def test_raw_penalty_decays_biases_too_with_regularize_bias():
  params = {"dense": {"kernel": 2 * jnp.ones((3, 4)), "bias": jnp.ones(4)}}
  np.testing.assert_allclose(pp.weight_decay_penalty(params, 0.1), 0.5 * 0.1 * 48)
  with_bias = pp.weight_decay_penalty(params, 0.1, regularize_bias=True)
  np.testing.assert_allclose(with_bias, 0.5 * 0.1 * 52)


@pytest.mark.slow  # trains a run
def test_logged_objective_is_the_minimised_one_with_regularize_bias(raw_mnist, tmp_path):
  """wd_objective, recomputed from the saved params: L + λ Σ ‖[w_i, a_i]‖‖v_i‖ + λ/2 Σ ‖b_out‖²."""
  workdir = tmp_path / "run"
  argv = flags(raw_mnist, tmp_path, workdir=workdir, regularize_bias="true", weight_decay=0.01)
  assert cli.main("mnist_subset_mlp", argv) == 0
  step, state = restore_params(workdir)
  row = next(r for r in read_rows(workdir) if r["step"] == step)
  params = {name: {k: np.asarray(v, np.float64) for k, v in layer.items()}
            for name, layer in state["params"].items()}  # fmt: skip
  penalty = 0.0
  for group in range(3):  # Dense_{2g} computes group g's units, Dense_{2g+1} reads them
    w, a = params[f"Dense_{2 * group}"]["kernel"], params[f"Dense_{2 * group}"]["bias"]
    v, b = params[f"Dense_{2 * group + 1}"]["kernel"], params[f"Dense_{2 * group + 1}"]["bias"]
    inputs = np.sqrt(np.sum(w * w, axis=0) + a * a)
    penalty += np.sum(inputs * np.linalg.norm(v, axis=1)) + 0.5 * np.sum(b * b)
  np.testing.assert_allclose(row["wd_objective"], row["train_loss"] + 0.01 * penalty, rtol=1e-5)
