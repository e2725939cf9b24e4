"""PathProx: a proximal step for weight-decay-regularised networks, as an Optax transform."""

from pathprox_jax._src.annotations import GroupSpec as GroupSpec
from pathprox_jax._src.annotations import GroupSpecTree as GroupSpecTree
from pathprox_jax._src.annotations import PathProxGroup as PathProxGroup
from pathprox_jax._src.annotations import group_inits as group_inits
from pathprox_jax._src.annotations import group_metadata as group_metadata
from pathprox_jax._src.annotations import group_spec as group_spec
from pathprox_jax._src.annotations import with_group as with_group
from pathprox_jax._src.balance import balance as balance
from pathprox_jax._src.budget import SELECTIONS as SELECTIONS
from pathprox_jax._src.budget import BudgetState as BudgetState
from pathprox_jax._src.budget import Selection as Selection
from pathprox_jax._src.budget import budget_adamw as budget_adamw
from pathprox_jax._src.budget import budget_sgd as budget_sgd
from pathprox_jax._src.budget import with_budget as with_budget
from pathprox_jax._src.compact import KeptUnits as KeptUnits
from pathprox_jax._src.compact import compact as compact
from pathprox_jax._src.compact import compact_state as compact_state
from pathprox_jax._src.costs import relative_costs as relative_costs
from pathprox_jax._src.costs import unit_costs as unit_costs
from pathprox_jax._src.decay import decayed_mask as decayed_mask
from pathprox_jax._src.discovery import GroupReport as GroupReport
from pathprox_jax._src.discovery import discover_groups as discover_groups
from pathprox_jax._src.discovery import explain_groups as explain_groups
from pathprox_jax._src.groups import unit_counts as unit_counts
from pathprox_jax._src.metrics import ActiveUnits as ActiveUnits
from pathprox_jax._src.metrics import PathNorm as PathNorm
from pathprox_jax._src.metrics import Summary as Summary
from pathprox_jax._src.metrics import active_units as active_units
from pathprox_jax._src.metrics import path_norm as path_norm
from pathprox_jax._src.metrics import summarize as summarize
from pathprox_jax._src.metrics import unit_path_norms as unit_path_norms
from pathprox_jax._src.metrics import weight_decay_objective as weight_decay_objective
from pathprox_jax._src.params import is_kernel as is_kernel
from pathprox_jax._src.params import kernel_mask as kernel_mask
from pathprox_jax._src.prox import prox as prox
from pathprox_jax._src.rules import PathRule as PathRule
from pathprox_jax._src.rules import attention_head_rules as attention_head_rules
from pathprox_jax._src.rules import group_spec_from_paths as group_spec_from_paths
from pathprox_jax._src.transform import THRESHOLD_RULES as THRESHOLD_RULES
from pathprox_jax._src.transform import PathProxState as PathProxState
from pathprox_jax._src.transform import ThresholdRule as ThresholdRule
from pathprox_jax._src.transform import pathprox as pathprox
from pathprox_jax._src.transform import pathprox_adamw as pathprox_adamw
from pathprox_jax._src.transform import pathprox_sgd as pathprox_sgd

__version__ = "0.1.0"
