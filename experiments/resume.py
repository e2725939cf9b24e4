"""Which run folder a command writes, and whether it may: new folders, resuming, refusals.

A new run goes to ``runs/<experiment>-<method>-<time>``; ``--resume`` continues the newest one
(or ``--workdir``) with the run's own config. A folder that holds a run is never overwritten,
and a resumed run may not go back before its checkpoint. :class:`WorkdirError` says why not.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ml_collections

from configs import ConfigError
from experiments import run_folder
from experiments.config_checks import RESUMABLE_KEYS, check, flag, format_value

RUNS_DIR = "runs"  # where runs go without --workdir: runs/<experiment>-<method>-<time>


class WorkdirError(ValueError):
  """The run directory cannot be used as asked."""


def new_workdir(config: ml_collections.ConfigDict) -> str:
  """``runs/<experiment>-<method>-<time>``."""
  stamp = time.strftime("%Y%m%d-%H%M%S")
  return os.path.join(RUNS_DIR, f"{config.experiment}-{config.method}-{stamp}")


def newest_run(config: ml_collections.ConfigDict) -> str:
  """The newest ``runs/<experiment>-<method>-<time>`` (for ``--resume`` without ``--workdir``)."""
  prefix = f"{config.experiment}-{config.method}-"
  runs = sorted(p.name for p in Path(RUNS_DIR).glob(prefix + "*") if p.is_dir())
  if not runs:
    raise ConfigError(
      f"--resume: no run of {config.experiment} with --method {config.method} in "
      f"{RUNS_DIR}/ to resume; pass --workdir"
    )
  return os.path.join(RUNS_DIR, runs[-1])


def check_workdir(workdir: str) -> None:
  """The run directory can be created and written (checked before anything is written).

  Its entries must be of their kind: ``checkpoints`` a folder, ``config.json`` and
  ``metrics.jsonl`` files; anything else would be lost or misread once the run writes.
  """
  path = Path(workdir)
  check(not path.exists() or path.is_dir(), f"--workdir {workdir} is a file, not a directory")
  for name, folder in (
    (run_folder.CHECKPOINTS, True), (run_folder.CONFIG, False), (run_folder.METRICS, False)
  ):  # fmt: skip
    entry = path / name
    kinds = ("a folder", "a file") if folder else ("a file", "a folder")
    check(
      not entry.exists() or entry.is_dir() == folder,
      f"{entry} is {kinds[1]} where the run keeps {kinds[0]}; move it aside or choose another "
      "--workdir",
    )
  existing = next(p for p in (path, *path.absolute().parents) if p.exists())
  check(
    existing.is_dir() and os.access(existing, os.W_OK | os.X_OK),
    f"--workdir {workdir}: {existing} is not writable",
  )


def resumed_config(
  workdir: str, config: ml_collections.ConfigDict, overrides: frozenset[str]
) -> ml_collections.ConfigDict:
  """The config of the run in ``workdir``, with this command's changes to resumable keys.

  Keys not on the command line keep the run's values. Keys that change the
  trajectory (all but :data:`RESUMABLE_KEYS`) must equal the run's.

  Raises:
    ConfigError: a key that changes the trajectory differs (all such keys listed), or
      the run has checkpoints but no readable ``config.json``.
  """
  try:
    before = run_folder.read_config(Path(workdir) / run_folder.CONFIG)
  except run_folder.NotARunError as e:
    if run_folder.checkpoint_steps(Path(workdir) / run_folder.CHECKPOINTS):
      raise ConfigError(f"--resume: {workdir} has checkpoints but {e}") from None
    return config  # nothing was run there yet: the run starts now
  differing = [key for key in sorted(overrides - RESUMABLE_KEYS) if config[key] != before[key]]
  if differing:
    changes = ", ".join(
      f"{flag(k)} {format_value(before[k])} (here {format_value(config[k])})" for k in differing
    )
    raise ConfigError(
      f"--resume: {workdir} was run with {changes}; these change the training trajectory, so "
      "resume with the run's values or start a new run in another --workdir"
    )
  resumed = config.copy_and_resolve_references()
  for key in config:
    if key not in overrides:
      resumed[key] = before[key]
  return resumed


def check_workdirs(configs, workdirs: list[Path], names, resume: bool) -> list[dict | None]:
  """Each member's divergence record (resume only), once the folders allow the run."""
  markers = [_divergence_record(w) if resume else None for w in workdirs]
  latest = {}
  for config, workdir, marker, name in zip(
    configs, workdirs, markers, names or workdirs, strict=True
  ):
    if marker is None:
      _check_workdir_state(workdir, config, resume)
      saved = run_folder.checkpoint_steps(Path(workdir) / run_folder.CHECKPOINTS)
      latest[name] = saved[-1] if saved else None
  if len(set(latest.values())) > 1:
    steps = ", ".join(f"{name}: {step}" for name, step in latest.items())
    raise WorkdirError(
      f"the members' latest checkpoints are at different steps ({steps}); cannot resume together"
    )
  return markers


def _divergence_record(workdir: Path) -> dict[str, Any] | None:
  """``config.json``'s ``diverged`` record of a run folder (None: none, or no such file)."""
  path = workdir / run_folder.CONFIG
  if not path.exists():
    return None
  try:
    return run_folder.read_record(path).get(run_folder.DIVERGED)
  except run_folder.NotARunError as e:
    raise WorkdirError(str(e)) from None


def _check_workdir_state(workdir: Path, config: ml_collections.ConfigDict, resume: bool) -> None:
  """Refuses to overwrite a run, or to resume one to before its checkpoint."""
  checkpoints = workdir / run_folder.CHECKPOINTS
  saved = run_folder.checkpoint_steps(checkpoints)
  if not resume:
    held = [name for name, there in ((run_folder.CHECKPOINTS, saved), (run_folder.METRICS,
            (workdir / run_folder.METRICS).exists())) if there]  # fmt: skip
    if held:
      raise WorkdirError(
        f"{workdir} already holds {' and '.join(held)}; pass --resume to continue that run or "
        "choose another --workdir"
      )
  elif saved and config.total_iter < saved[-1]:
    raise WorkdirError(
      f"--total-iter {config.total_iter} is below step {saved[-1]} of the checkpoint in "
      f"{checkpoints}; pass --total-iter {saved[-1]} or more"
    )
