"""Layer balance: a function-preserving rescaling that equalises groups' path norms.

For groups ``k = 0..K-1`` in forward order with path norms
:math:`P_k = \\sum_i \\|w_i\\| \\|v_i\\|`, let :math:`G = (\\prod_k P_k)^{1/K}` and

.. math::
  \\alpha_k = \\prod_{j \\le k} G / P_j, \\qquad \\alpha_{-1} = \\alpha_{K-1} = 1.

Group ``k``'s "out" kernel is scaled by :math:`\\alpha_k / \\alpha_{k-1}`, its "out"
bias by :math:`\\alpha_k` and its "in" bias by :math:`\\alpha_{k-1}`; "in" kernels
are unchanged. Every group's path norm becomes :math:`G`. This equals scaling
``v_k`` and its bias by ``s``, the next group's "in" bias by ``s`` and its ``v``
by ``1/s``, one group after another. It preserves the network function when
group ``k``'s "out" layer feeds group ``k+1``'s "in" layer through positively
homogeneous operations only (ReLU, max or average pooling, identity).

**The chain rule.** The balanced groups must form chains: an MLP or a VGG-style
stack of Dense/Conv groups is one chain. A residual connection breaks a chain (the
scale of group ``k``'s output would reach the residual stream), and so do attention
heads and "follow" parameters (a gate or a query reads the rescaled input through
a non-homogeneous function). ``balance=True`` takes the chains the spec carries
(:attr:`pathprox_jax.GroupSpec.chain`; :func:`pathprox_jax.discover_groups` sets
them from the trace, so discovered groups are never balanced across a residual
add), or, for a spec that carries none (annotations), all groups, in group order,
as one chain (cut before each BatchNorm group, see below). A sequence of chains
(group ids in forward order, e.g. :attr:`pathprox_jax.GroupReport.chains` from the
trace) balances each chain of two or more groups on its own, with its own :math:`G`,
and leaves every other group as it is. The balance refuses a balanced group that
is not in the Dense/Conv layout or has followers (but a BatchNorm's): an annotated
transformer's spec with heads needs ``balance=False`` or chains without the heads.
An annotated transformer whose only groups are Dense FFN neurons cannot be told
from an MLP by its parameters: pass ``balance=False`` (or the discovered chains)
yourself.

A BatchNorm unit (:func:`pathprox_jax.batch_norm_inits`) computes
:math:`\\mathrm{relu}(\\gamma_i \\hat a_i + \\beta_i)` from its normalised input
:math:`\\hat a_i`, which does not scale with the layers before it: it can start a chain
(its input is never rescaled, and its "out" layer passes :math:`\\alpha_0` on like any
other), but a scale that reached it from an earlier group would not reach its output.
So ``balance=True`` on a spec without chains cuts the chain of all groups before each
BatchNorm group, and the balance refuses given chains with a BatchNorm group anywhere but
first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import unit_norms
from pathprox_jax._src.annotations import GroupSpecTree
from pathprox_jax._src.checks import check_hyperparameter
from pathprox_jax._src.unit_norms import EPS


def balance_scales(path_norms: jax.Array, eps: float = EPS) -> jax.Array:
  """The cumulative scales :math:`\\alpha_k` of the layer balance, in f32.

  Args:
    path_norms: shape ``[K]``, each group's path norm in forward order.
    eps: a group whose path norm is at most ``eps`` has no finite balancing
      scale; the balance is then skipped (all scales one) for this step.

  Returns:
    :math:`\\alpha`, shape ``[K]``, with :math:`\\alpha_{K-1} = 1` exactly.
  """
  path_norms = path_norms.astype(jnp.float32)
  finite = jnp.all(path_norms > eps)
  log_p = jnp.log(jnp.where(finite, path_norms, 1.0))
  log_alpha = jnp.cumsum(jnp.mean(log_p) - log_p)
  alpha = jnp.exp(log_alpha).at[-1].set(1.0)
  return jnp.where(finite, alpha, jnp.ones_like(alpha))


def previous_scales(alpha: jax.Array) -> jax.Array:
  """:math:`\\alpha_{k-1}` for every ``k`` (one for the first group)."""
  return jnp.concatenate([jnp.ones((1,), alpha.dtype), alpha[:-1]])


Chains = Sequence[Sequence[int]]
"""Chains of group ids, each in forward order: ``((0, 1), (2, 3))``, ``GroupReport.chains``."""


def check_chain(layouts: Sequence[groups_lib.GroupLayout]) -> None:
  """Refuses to balance groups that do not form a Dense/Conv chain (the module's chain rule)."""
  for k, g in enumerate(layouts):
    if g.normalized and k:
      raise ValueError(
        f"PathProx layer balance: group {g.group} is a BatchNorm group after group "
        f"{layouts[k - 1].group} in its chain; the BatchNorm normalises the scale the balance "
        "passes on, so it can only start a chain: pass balance=False, or chains in which "
        "every BatchNorm group comes first."
      )
    if not g.plain:
      raise ValueError(
        f"PathProx layer balance rescales group k+1 through group k's output, which only "
        f"holds along a chain of Dense/Conv groups; group {g.group} has "
        f"{'followers' if g.followers else 'units on a non-Dense/Conv axis'} (attention heads "
        "or gated units, i.e. a transformer with residual blocks): pass balance=False, or chains "
        "without it."
      )


def chain_layouts(
  layouts: Sequence[groups_lib.GroupLayout], balance: bool | Chains
) -> tuple[tuple[groups_lib.GroupLayout, ...], ...]:
  """The chains that the layer balance rescales, as layouts, checked.

  Args:
    layouts: every group, sorted by group id (:func:`groups_lib.group_layouts`).
    balance: as ``chains`` of :func:`balance`.

  Returns:
    The chains of two or more groups (a single group has nothing to balance
    against): for ``True`` and a spec without chains, all groups as one chain,
    cut before each BatchNorm group.

  Raises:
    ValueError: if a chain names a group the spec does not have, a group is in
      two chains (or twice in one), some groups carry a chain and others not (with
      ``True``), or a balanced group breaks the chain rule.
  """
  if isinstance(balance, bool):
    chains = _carried_chains(layouts) if balance else ()
  else:
    by_id = {g.group: g for g in layouts}
    try:
      ids = tuple(tuple(chain) for chain in balance)
    except TypeError as error:
      raise ValueError(
        f"PathProx balance must be True, False or a sequence of chains (tuples of group ids), "
        f"got {balance!r}."
      ) from error
    seen: set[int] = set()
    for chain in ids:
      for k in chain:
        if k not in by_id:
          raise ValueError(
            f"PathProx balance chain {chain} names group {k!r}, which is not a group of the "
            f"spec (groups {sorted(by_id)})."
          )
        if k in seen:
          raise ValueError(
            f"PathProx balance: group {k} is in more than one chain (or twice in {chain}); "
            "each group belongs to at most one chain."
          )
        seen.add(k)
    chains = tuple(tuple(by_id[k] for k in chain) for chain in ids if len(chain) > 1)
  for chain in chains:
    check_chain(chain)
  return chains


def split_chains(normalized: Sequence[bool], linked: Sequence[bool]) -> tuple[tuple[int, ...], ...]:
  """Groups 0..n-1, in order, split into balance chains: group ``k`` continues the chain of
  ``k - 1`` where ``linked[k]`` (``k - 1``'s out layer scales ``k``'s in layer) and ``k`` is
  no BatchNorm group (``normalized[k]``): a BatchNorm's normalisation would undo the scale
  the balance passes on, so every BatchNorm group starts a chain."""
  chains: list[list[int]] = []
  for k, (norm, link) in enumerate(zip(normalized, linked, strict=True)):
    if chains and link and not norm:
      chains[-1].append(k)
    else:
      chains.append([k])
  return tuple(tuple(chain) for chain in chains)


def _carried_chains(
  layouts: Sequence[groups_lib.GroupLayout],
) -> tuple[tuple[groups_lib.GroupLayout, ...], ...]:
  """What ``balance=True`` balances: the chains the specs carry, else all groups in group
  order, cut before each BatchNorm group (every BatchNorm group starts a chain)."""
  carried = [g.group for g in layouts if g.chain is not None]
  if not carried:
    positions = split_chains([g.normalized for g in layouts], [True] * len(layouts))
    return tuple(tuple(layouts[k] for k in chain) for chain in positions)
  if len(carried) < len(layouts):
    bare = [g.group for g in layouts if g.chain is None]
    raise ValueError(
      f"PathProx balance=True: groups {carried} carry balance chains (discovered) but groups "
      f"{bare} do not; pass balance as chains of group ids, e.g. explain_groups(...).balance."
    )
  by_chain: dict[int, list[groups_lib.GroupLayout]] = {}
  for g in layouts:
    by_chain.setdefault(g.chain, []).append(g)
  return tuple(tuple(chain) for chain in by_chain.values() if len(chain) > 1)


def balance_leaves(
  leaves: Mapping[int, unit_norms.ScaledUnits],
  chains: Sequence[Sequence[groups_lib.GroupLayout]],
  eps: float = EPS,
) -> dict[int, unit_norms.ScaledUnits]:
  """The layer balance as a rescaling stage (see :func:`unit_norms.apply_stages`).

  Args:
    leaves: the grouped leaves, indexed as in the layouts.
    chains: the chains to balance, each in forward order (from :func:`chain_layouts`).
    eps: a chain's balance is skipped when one of its groups' path norm is at most ``eps``.

  Returns:
    ``{leaf index: rescaled leaf}`` for the "out" kernels and the biases it scales.
  """
  new = {}
  for chain in chains:
    path_norms = jnp.stack([jnp.sum(unit_norms.unit_path_norms(leaves, g)) for g in chain])
    alpha = balance_scales(path_norms, eps)
    prev = previous_scales(alpha)
    for k, g in enumerate(chain):
      new[g.out_kernel] = leaves[g.out_kernel].times(alpha[k] / prev[k])
      if g.out_bias is not None:
        new[g.out_bias] = leaves[g.out_bias].times(alpha[k])
      if g.in_bias is not None:
        new[g.in_bias] = leaves[g.in_bias].times(prev[k])
  return new


def balance(
  params: Any, groups: GroupSpecTree, *, chains: bool | Chains = True, eps: float = EPS
) -> Any:
  """Rescales the groups of each chain so that they all have the chain's path norm.

  The network function is unchanged (see the module docstring for when). The transforms
  (:func:`pathprox_jax.pathprox`, its recipes, :func:`pathprox_jax.with_budget`) and
  :func:`pathprox_jax.prox` take ``chains`` as their ``balance`` argument and balance before
  each prox, with one exception. With ``regularize_bias`` a unit's input weights are
  :math:`[w_i, a_i]` (its "in" bias normalised with its kernel column) and the other biases get
  ordinary weight decay; the balance, which rescales biases, would then change the objective,
  so it is skipped.

  Args:
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    chains: ``True``: the chains the spec carries (discovered groups', see
      :attr:`pathprox_jax.GroupSpec.chain`), or for a spec without chains all
      groups, in group order, as one chain (cut before each BatchNorm group);
      ``False``: no balance; or chains of
      group ids in forward order, e.g. ``explain_groups(...).balance``: each
      chain of two or more groups is balanced on its own, and groups in no chain
      are left as they are.
    eps: a chain is left as it is when one of its groups' path norm is at most ``eps``.

  Returns:
    The balanced parameters, with the dtypes of ``params``.

  Raises:
    ValueError: if a balanced group is not in the Dense/Conv layout or has
      followers (attention heads, gates: see the chain rule in the module
      docstring), a chain names an unknown group or one already in a chain, or
      a concrete ``eps`` is not finite and > 0.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import pathprox_jax
    >>> params = {"a": {"kernel": jnp.ones((2, 3))}, "b": {"kernel": 4 * jnp.ones((3, 2))},
    ...           "c": {"kernel": jnp.ones((2, 2))}, "d": {"kernel": jnp.ones((2, 1))}}
    >>> G = pathprox_jax.GroupSpec
    >>> groups = {"a": {"kernel": G(0, "in")}, "b": {"kernel": G(0, "out")},
    ...           "c": {"kernel": G(1, "in")}, "d": {"kernel": G(1, "out")}}
    >>> norms = pathprox_jax.path_norm(pathprox_jax.balance(params, groups), groups)
    >>> [round(float(x), 3) for x in norms.per_group.values()]
    [8.239, 8.239]
    >>> alone = pathprox_jax.balance(params, groups, chains=((0,), (1,)))
    >>> [round(float(x), 3) for x in pathprox_jax.path_norm(alone, groups).per_group.values()]
    [24.0, 2.828]
  """

  check_hyperparameter("eps", eps, "finite and > 0", lambda x: x > 0, schedule=False)

  def step(leaves, layouts):
    balanced = chain_layouts(layouts, chains)
    return unit_norms.apply_stages(
      leaves, layouts, [lambda scaled: balance_leaves(scaled, balanced, eps)]
    )

  return groups_lib.update_grouped(params, groups, step)
