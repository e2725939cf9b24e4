"""What a run writes about itself as it starts: ``config.json``, and a copy of its init params.

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
from experiments.config_checks import recorded
from experiments.resume import saved_steps

INIT_PARAMS = "init-params"  # a fine-tune's copy of the params it started from


def init_params_source(config: ml_collections.ConfigDict, workdir: Path, resume: bool) -> str:
  """The folder a run's initial params are read from ("": the model's random init).

  A resumed run with checkpoints reads none: the checkpoint holds its params, and the
  random init gives their structure and shapes. One without reads its own copy
  (:data:`INIT_PARAMS`) where it has one, else ``init_params``.
  """
  if not config.init_params or (resume and saved_steps(workdir)):
    return ""
  copy = Path(workdir) / INIT_PARAMS
  return str(copy) if copy.is_dir() else config.init_params


def copy_init_params(workdir: Path, source: str) -> None:
  """Copies the params a run started from (``source``) into its folder, once."""
  copy = Path(workdir) / INIT_PARAMS
  if source and not copy.exists():
    run_folder.write_atomic(copy, lambda tmp: shutil.copytree(Path(source).absolute(), tmp))


def write_config(
  path: Path,
  config: ml_collections.ConfigDict,
  params: Any,
  groups: Any,
  command: str,
  resumed_from: int | None = None,
) -> None:
  """``config.json``: the config, the command, the library version, devices and groups.

  The config's keys are those that apply to its model, split and schedule
  (:func:`experiments.config_checks.recorded`). A resumed run (``resumed_from``: the step)
  keeps the record it started with and appends ``{"command", "step", "changed"}`` to its
  ``resumes``: the command, the step it resumed from, and the config keys it changed (only
  those that cannot change the trajectory).
  """
  record = None
  if resumed_from is not None and path.exists():
    record = run_folder.read_record(path)  # resume.resumed_config has read it already
    before = run_folder.read_config(path)
    changed = {k: v for k, v in recorded(config).items() if config[k] != before[k]}
    resume = {"command": command, "step": resumed_from, "changed": changed}
    record.setdefault("resumes", []).append(resume)
  if record is None:
    units = {str(g): n for g, n in pp.unit_counts(params, groups).items()}
    record = recorded(config)
    record.update(
      command=command,
      pathprox_jax_version=pp.__version__,
      devices=f"{jax.device_count()} x {jax.devices()[0].platform}",
      processes=jax.process_count(),
      groups=sorted(int(g) for g in units),
      units=units,
      group_names={str(g): name for g, name in models.group_names(config).items()},
    )
  path.parent.mkdir(parents=True, exist_ok=True)
  run_folder.write_json(path, record)
