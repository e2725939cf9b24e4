"""Splits, normalisation, augmentation and on-device batch sampling."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments.dataset_facts import DATASETS, Arrays

SPLIT_SEED = 42  # the fixed permutation behind the subset and the holdout split


def split(
  arrays: dict[str, Arrays], kind: str, *, val_size: int, train_per_class: int
) -> dict[str, Arrays]:
  """Train, validation and test sets from a data set's train and test splits.

  A fixed permutation (NumPy, seed 42) of the training images in their raw order
  defines both kinds of split.

  Args:
    arrays: ``{"train": (images, labels), "test": (images, labels)}``.
    kind: ``"subset"``: the first ``train_per_class`` images of each class in
      that order are the training set, all others the validation set.
      ``"holdout"``: the last ``val_size`` images of the permutation are the
      validation set, the rest the training set.
    val_size: the validation set's size, for ``"holdout"``.
    train_per_class: the training images per class, for ``"subset"``.

  Returns:
    ``{"train", "val", "test"}`` each ``(images uint8 [N, H, W, C], labels int32 [N])``.
  """
  images, labels = arrays["train"]
  order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
  if kind == "subset":
    rank = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
      in_class = order[labels[order] == c]
      rank[in_class] = np.arange(len(in_class))
    chosen = rank[order] < train_per_class
    train_idx, val_idx = order[chosen], order[~chosen]
  else:
    train_idx, val_idx = order[: len(order) - val_size], order[len(order) - val_size :]
  return {
    "train": (images[train_idx], labels[train_idx]),
    "val": (images[val_idx], labels[val_idx]),
    "test": arrays["test"],
  }


def normalize(images: jax.Array, dataset: str) -> jax.Array:
  """uint8 images → float32 scaled to [0, 1], then per-channel standardised."""
  mean, std = DATASETS[dataset].mean, DATASETS[dataset].std
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def augment(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Per-image random crop (padding ``pad`` with zeros) and horizontal flip, on device.

  Zero padding is black only for raw images (uint8 or in [0, 1]): augment before
  :func:`normalize`, as :func:`train_inputs` does.
  """
  batch, height, width, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(flip_key, 0.5, (batch, 1, 1, 1))
  return jnp.where(flip, cropped[:, :, ::-1], cropped)


def train_inputs(images: jax.Array, dataset: str, key: jax.Array | None = None) -> jax.Array:
  """A training batch's model inputs: augmented with ``key`` (if given), then normalised.

  The crop pads with black, as the paper's code does (PyTorch's ``RandomCrop``
  before ``Normalize``); padding after normalising would pad with the mean colour.
  Evaluation (the train, validation and test metrics) uses clean images.

  Args:
    images: uint8 images ``[B, H, W, C]``.
    dataset: the data set's name (its normalisation constants).
    key: the augmentation's random key; ``None``: no augmentation.

  Returns:
    float32 ``[B, H, W, C]``.
  """
  if key is not None:
    images = augment(key, images)
  return normalize(images, dataset)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Batches in one pass over the data, the last partial batch kept."""
  return math.ceil(num_examples / batch_size)


def epoch_order(key: jax.Array, epoch: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """The epoch's shuffled example indices, padded with -1 to whole batches."""
  order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  padding = steps_per_epoch(num_examples, batch_size) * batch_size - num_examples
  return jnp.concatenate([order, jnp.full((padding,), -1, order.dtype)])


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
  """Pads a split to whole batches: ``([B, b, ...] images, [B, b] labels, [B, b] mask)``."""
  count = steps_per_epoch(len(labels), batch_size)
  padding = count * batch_size - len(labels)
  mask = np.concatenate([np.ones(len(labels), bool), np.zeros(padding, bool)])
  images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])
  labels = np.concatenate([labels, np.zeros(padding, labels.dtype)])
  return (
    images.reshape(count, batch_size, *images.shape[1:]),
    labels.reshape(count, batch_size),
    mask.reshape(count, batch_size),
  )


def device_batch(
  order: jax.Array, step: jax.Array, device: jax.Array, batch_size: int, num_devices: int
) -> jax.Array:
  """Device ``device``'s slice of step ``step``'s batch in an epoch ``order``, padded with -1.

  The step's batch (``order[s·b : (s+1)·b]``, ``s`` the step within the epoch) is cut
  into ``num_devices`` consecutive slices of ``ceil(b / num_devices)`` indices; when
  ``b`` does not divide, the last slices are filled up with -1 (masked out), so the
  devices together take every index of the batch exactly once.
  """
  local = -(-batch_size // num_devices)
  start = (step % (len(order) // batch_size)) * batch_size
  batch = jax.lax.dynamic_slice(order, (start,), (batch_size,))
  padded = jnp.pad(batch, (0, local * num_devices - batch_size), constant_values=-1)
  return jax.lax.dynamic_slice(padded, (device * local,), (local,))
