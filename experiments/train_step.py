"""The compiled per-device training loop: sample a batch on the device, step, repeat.

The data set lives on the devices; every step samples its batch there (a fresh
permutation per epoch, the last partial batch kept and masked), and a whole
stretch of steps between two evaluations runs as one compiled loop. Each device
takes its slice of the global batch, the gradients are summed across devices
(``psum``) and divided by the global count, and every device applies the same
optimiser step.
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
  """A run's state: the step reached, the parameters and the optimiser's state."""

  step: jax.Array
  params: Any
  opt_state: Any


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
      logits = model.apply({"params": params}, x)
      return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * valid)

    local_loss, local_grads = jax.value_and_grad(loss_sum)(state.params)
    count = jax.lax.psum(jnp.sum(valid), AXIS)
    grads = jax.tree.map(lambda g: jax.lax.psum(g, AXIS) / count, local_grads)
    loss = jax.lax.psum(local_loss, AXIS) / count
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, opt_state), loss

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
