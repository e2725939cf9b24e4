"""PathProx: a proximal step for weight-decay-regularised networks, as an Optax transform.

The names live in private modules (``pathprox_jax._src``) and are handed on here. Most need JAX,
so they are loaded lazily (PEP 562): the table ``_LAZY`` says which module holds each name, and
the module-level ``__getattr__`` imports that module the first time the name is asked for
(``pp.X`` or ``from pathprox_jax import X``), then keeps the value in this module's namespace so
that later lookups are ordinary. ``__all__`` and ``dir()`` list every name. The JAX-free names
(the threshold rules, and a budget's kept thresholds) are imported at once. Importing a
submodule runs this file first, so the command lines can read
``pathprox_jax._src.threshold_rules`` without loading JAX, and ``--help`` stays fast.
"""

import importlib
from typing import Any

from pathprox_jax._src.threshold_rules import KEPT_THRESHOLDS as KEPT_THRESHOLDS
from pathprox_jax._src.threshold_rules import THRESHOLD_RULES as THRESHOLD_RULES
from pathprox_jax._src.threshold_rules import KeptThreshold as KeptThreshold
from pathprox_jax._src.threshold_rules import ThresholdRule as ThresholdRule

__version__ = "0.1.0"

_LAZY = {
  "GroupSpec": "annotations",
  "GroupSpecTree": "annotations",
  "PathProxGroup": "annotations",
  "batch_norm_inits": "annotations",
  "group_inits": "annotations",
  "group_metadata": "annotations",
  "group_spec": "annotations",
  "with_group": "annotations",
  "balance": "balance",
  "SELECTIONS": "budget",
  "BudgetState": "budget",
  "Selection": "budget",
  "budget_adamw": "alias",
  "budget_sgd": "alias",
  "with_budget": "budget",
  "KeptUnits": "compact",
  "compact": "compact",
  "compact_state": "compact",
  "relative_costs": "costs",
  "unit_costs": "costs",
  "decayed_mask": "decay",
  "GroupReport": "group_report",
  "discover_groups": "discovery",
  "explain_groups": "discovery",
  "unit_counts": "groups",
  "magnitude_masks": "unit_masks",
  "ActiveUnits": "metrics",
  "PathNorm": "metrics",
  "Summary": "metrics",
  "active_units": "metrics",
  "path_norm": "metrics",
  "summarize": "metrics",
  "unit_path_norms": "metrics",
  "weight_decay_objective": "metrics",
  "weight_decay_penalty": "metrics",
  "is_kernel": "params",
  "kernel_mask": "params",
  "prox": "prox",
  "PathRule": "rules",
  "attention_head_rules": "rules",
  "group_spec_from_paths": "rules",
  "PathProxState": "transform",
  "pathprox": "transform",
  "pathprox_adamw": "alias",
  "pathprox_sgd": "alias",
}

__all__ = sorted(["KEPT_THRESHOLDS", "KeptThreshold", "THRESHOLD_RULES", "ThresholdRule", *_LAZY])


def __getattr__(name: str) -> Any:
  if name not in _LAZY:
    raise AttributeError(f"module 'pathprox_jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"pathprox_jax._src.{_LAZY[name]}"), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *__all__})
