"""One optax transformation that applies one of several, chosen by an index in its state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class MemberOptState(NamedTuple):
  """A member's optimiser state: which weight decay it trains with, and that optimiser's state."""

  weight_decay_index: jax.Array
  inner: Any


def select_by_member(txs: Sequence[optax.GradientTransformation]) -> optax.GradientTransformation:
  """One transformation that applies ``txs[state.weight_decay_index]``.

  The optimisers differ only in their weight decay, so their states share one
  structure. Under ``vmap`` every branch is computed and the member's one
  selected: the extra cost is one optimiser update per weight decay, small
  beside the gradient. ``init`` gives index 0; a member sets its own.

  Args:
    txs: the optimisers, one per weight decay, whose states share one structure.

  Returns:
    The transformation; its state is a :class:`MemberOptState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = select_by_member([optax.sgd(0.5), optax.sgd(0.25)])
    >>> state = tx.init({"w": jnp.ones(2)})._replace(weight_decay_index=jnp.int32(1))
    >>> updates, _ = tx.update({"w": jnp.ones(2)}, state)
    >>> updates["w"].tolist()
    [-0.25, -0.25]
  """

  def init_fn(params):
    return MemberOptState(jnp.zeros((), jnp.int32), txs[0].init(params))

  def update_fn(updates, state, params=None):
    branches = [lambda u, s, p, tx=tx: tx.update(u, s, p) for tx in txs]
    updates, inner = jax.lax.switch(
      state.weight_decay_index, branches, updates, state.inner, params
    )
    return updates, MemberOptState(state.weight_decay_index, inner)

  return optax.GradientTransformation(init_fn, update_fn)
