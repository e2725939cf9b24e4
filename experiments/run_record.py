"""What a run records about itself as it starts: its ``config.json`` records, its init params.

A fine-tune (``init_params``: a compact or prune output's ``params/``) copies those params
into its own folder (:data:`INIT_PARAMS`) at its start, so that it needs nothing outside
the folder to resume: a resumed run takes its params from its checkpoint, or, if it has
none yet, from that copy. Moving or removing the source never stops it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections

import pathprox_jax as pp
from experiments import models, run_folder

INIT_PARAMS = "init-params"  # a fine-tune's copy of the params it started from


def init_params_source(config: ml_collections.ConfigDict, workdir: Path, resume: bool) -> str:
  """The folder a run's initial params are read from ("": the model's random init).

  A resumed run with checkpoints reads none: the checkpoint holds its params, and the
  random init gives their structure and shapes. One without reads its own copy
  (:data:`INIT_PARAMS`) where it has one, else ``init_params``.
  """
  checkpoints = Path(workdir) / run_folder.CHECKPOINTS
  if not config.init_params or (resume and run_folder.checkpoint_steps(checkpoints)):
    return ""
  copy = Path(workdir) / INIT_PARAMS
  return str(copy) if copy.is_dir() else config.init_params


def copy_init_params(workdir: Path, source: str) -> None:
  """Copies the params a run started from (``source``) into its folder, once."""
  copy = Path(workdir) / INIT_PARAMS
  if source and not copy.exists():
    run_folder.write_atomic(copy, lambda tmp: shutil.copytree(Path(source).absolute(), tmp))


def start_records(config: ml_collections.ConfigDict, params: Any, groups: Any) -> dict[str, Any]:
  """What a new run's ``config.json`` records beside its config and command.

  The library's version, the devices and processes, and the groups: their numbers,
  their units and (:func:`experiments.models.group_names`) what each holds. See
  :func:`experiments.run_folder.write_config`.
  """
  units = {str(g): n for g, n in pp.unit_counts(params, groups).items()}
  return {
    "pathprox_jax_version": pp.__version__,
    "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
    "processes": jax.process_count(),
    "groups": sorted(int(g) for g in units),
    "units": units,
    "group_names": {str(g): name for g, name in models.group_names(config).items()},
  }
