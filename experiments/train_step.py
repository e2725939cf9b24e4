"""The compiled per-device training loop: sample a batch on the device, step, repeat.

The data set lives on the devices; every step samples its batch there (a fresh
permutation per epoch, the last partial batch kept and masked), and a whole
stretch of steps between two evaluations runs as one compiled loop. Each device
takes its slice of the global batch, the gradients are summed across devices
(``psum``) and divided by the global count, and every device applies the same
optimiser step. A model with state besides its params (a BatchNorm's running statistics,
``batch_stats``) runs in training mode, its state mutable, and every device keeps the mean of
the devices' new state. The masked entries of a padded batch (the epoch's last, partial one;
a batch that does not divide by the devices) are copies of training image 0: they count in no
loss or gradient, but a BatchNorm's batch statistics include them (Flax's masked statistics
average the devices' means, which is not the global batch's where the devices' counts differ).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from experiments import input_pipeline
from experiments.parallel import AXIS


class TrainState(NamedTuple):
  """A run's state: the step reached, the parameters, the optimiser's state and the model's.

  ``model_state`` holds the model's variables other than ``params`` by collection (a
  BatchNorm's ``{"batch_stats": ...}``), ``{}`` for a model without any.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any


def model_state(variables: Any) -> dict[str, Any]:
  """The model's variables other than its ``params`` (``model.init``'s), by collection."""
  return {name: value for name, value in variables.items() if name != "params"}


def train_logits(
  model: nn.Module, params: Any, state: Any, x: jax.Array
) -> tuple[jax.Array, dict[str, Any]]:
  """The model's outputs in training mode, and its new state (``state``'s collections).

  The collections of ``state`` are mutable, which is how a model knows it trains (a
  BatchNorm normalises by the batch's statistics and updates its running ones); without
  any, this is ``model.apply({"params": params}, x)``.
  """
  return model.apply({"params": params, **state}, x, mutable=list(state))


def make_train_steps(
  model: nn.Module,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
  num_examples: int,
  num_devices: int,
) -> Callable[..., tuple[TrainState, jax.Array]]:
  """The per-device loop: runs up to ``num_steps`` steps, stopping at a non-finite loss.

  Each device takes its slice of every global batch (:func:`input_pipeline.device_batch`:
  a batch that does not divide by ``num_devices`` is padded with masked entries), so
  the step is the same whatever the number of devices and processes.

  Returns ``fn(state, num_steps, images, labels, key_data) -> (state, loss)``
  to be wrapped by ``shard_map`` or ``pmap`` over axis ``"data"``;
  ``loss`` is the last step's global mean training loss.
  """
  batch = config.batch_size
  per_epoch = input_pipeline.steps_per_epoch(num_examples, batch)

  def train_step(state, images, labels, aug_key, order):
    device = jax.lax.axis_index(AXIS)
    idx = input_pipeline.device_batch(order, state.step, device, batch, num_devices)
    valid = idx >= 0
    step_key = None
    if config.augment:
      step_key = jax.random.fold_in(jax.random.fold_in(aug_key, state.step), device)
    x = input_pipeline.train_inputs(images[jnp.maximum(idx, 0)], config.dataset, step_key)
    y = labels[jnp.maximum(idx, 0)]

    def loss_sum(params):
      logits, new_state = train_logits(model, params, state.model_state, x)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      return jnp.sum(loss * valid), new_state

    (local_loss, new_state), local_grads = jax.value_and_grad(loss_sum, has_aux=True)(state.params)
    count = jax.lax.psum(jnp.sum(valid), AXIS)
    grads = jax.tree.map(lambda g: jax.lax.psum(g, AXIS) / count, local_grads)
    loss = jax.lax.psum(local_loss, AXIS) / count
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = jax.tree.map(lambda s: jax.lax.pmean(s, AXIS), new_state)
    return TrainState(state.step + 1, params, opt_state, new_state), loss

  def run(state, num_steps, images, labels, key_data):
    order_key, aug_key = jax.random.split(jax.random.wrap_key_data(key_data))

    def order_of(step):
      return input_pipeline.epoch_order(order_key, step // per_epoch, num_examples, batch)

    def cond(carry):
      i, _, _, loss = carry
      return (i < num_steps) & jnp.isfinite(loss)

    def body(carry):
      i, state, order, _ = carry
      order = jax.lax.cond(state.step % per_epoch == 0, lambda: order_of(state.step), lambda: order)
      state, loss = train_step(state, images, labels, aug_key, order)
      return i + 1, state, order, loss

    init = (jnp.zeros((), jnp.int32), state, order_of(state.step), jnp.zeros((), jnp.float32))
    _, state, _, loss = jax.lax.while_loop(cond, body, init)
    return state, loss

  return run
