"""Splits and the training batches' preprocessing."""

import jax
import jax.numpy as jnp
import numpy as np

from experiments import data, dataset_facts, input_pipeline


def test_subset_and_holdout_splits():
  labels = np.arange(1000) % 10
  images = np.arange(1000, dtype=np.uint8)[:, None, None, None]
  arrays = {"train": (images, labels), "test": (images[:10], labels[:10])}
  splits = input_pipeline.split(arrays, "subset", val_size=100, train_per_class=7)
  assert np.bincount(splits["train"][1]).tolist() == [7] * 10
  assert len(splits["val"][1]) == 930
  order = np.random.default_rng(42).permutation(1000)
  first = [i for i in order if labels[i] == 3][:7]
  assert sorted(splits["train"][0][splits["train"][1] == 3, 0, 0, 0].tolist()) == sorted(
    np.uint8(first).tolist()
  )
  splits = input_pipeline.split(arrays, "holdout", val_size=100, train_per_class=7)
  assert len(splits["train"][1]) == 900 and len(splits["val"][1]) == 100
  both = np.concatenate([splits["train"][0][:, 0, 0, 0], splits["val"][0][:, 0, 0, 0]])
  assert sorted(both.tolist()) == sorted(images[:, 0, 0, 0].tolist())


def test_random_crop_pads_with_black_before_normalising():
  white = jnp.full((64, 8, 8, 3), 255, jnp.uint8)
  x = np.asarray(input_pipeline.train_inputs(white, "cifar10", jax.random.key(0)))
  mean, std = (
    np.asarray(v)
    for v in (dataset_facts.DATASETS["cifar10"].mean, dataset_facts.DATASETS["cifar10"].std)
  )
  black, white_value = -mean / std, (1 - mean) / std
  is_black = np.isclose(x, black, atol=1e-5).all(-1)
  assert np.isclose(x, white_value, atol=1e-5).all(-1).sum() + is_black.sum() == x[..., 0].size
  # Most crops are shifted, so they show padding; padding is black, never the mean colour (0).
  assert is_black.any(axis=(1, 2)).mean() > 0.5
  assert not np.isclose(x, 0, atol=1e-3).any()
  # Without a key, the images are only normalised.
  clean = np.asarray(input_pipeline.train_inputs(white, "cifar10"))
  np.testing.assert_allclose(clean, np.broadcast_to(white_value, clean.shape), rtol=1e-6)


def test_the_data_set_table_agrees_with_the_builders():
  assert list(dataset_facts.DATASETS) == list(data.BUILDERS)
  for name, facts in dataset_facts.DATASETS.items():
    builder = data.BUILDERS[name]
    assert facts.classes == len(builder.CLASS_NAMES), name
    assert len(facts.mean) == len(facts.std) == builder.IMAGE_SHAPE[-1], name
