"""The params a run starts from (``--init-params``): a compact or prune output's, checked.

:func:`restore_init_params` restores the params saved in a folder (``DIR/params`` of
``experiments.compact`` or ``experiments.prune``) against the run's model, after checking the
source's model keys; :func:`restore_init_model_state` restores the model state saved beside
them (``model_state/``: a BatchNorm's running statistics).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from experiments import config_checks, models, run_folder
from experiments.checkpointing import first_line, fit_problem, quiet_abandoned_coroutines


class InitParamsError(ValueError):
  """The params a run is asked to start from cannot be restored for its model."""


def restore_init_params(directory: str, params: Any, config: Any = None) -> Any:
  """The params saved in ``directory`` (``init_params``), else ``params`` when it is "".

  Args:
    directory: an orbax params checkpoint (a compact or prune output's ``params/``), or "".
    params: the model's freshly initialised params: the structure, shapes and dtypes
      the saved ones must have.
    config: the run's config, whose model keys (the model, its widths, activations, ...)
      must equal those of the ``config.json`` beside ``directory``, where there is one.

  Returns:
    The params to start the run from.

  Raises:
    InitParamsError: ``directory`` is no folder, no params checkpoint of this model, or
      saved from a model of other keys.
  """
  if not directory:
    return params
  path = Path(directory).absolute()
  if not path.is_dir():
    raise InitParamsError(f"--init-params {directory}: no such folder")
  if config is not None:
    _check_source_model(directory, config)
  restored, problem = _restore_fitting(path, params)
  if problem is not None:
    raise InitParamsError(f"--init-params {directory} does not fit the model: {problem}")
  return restored


def restore_init_model_state(directory: str, model_state: Any) -> Any:
  """The model state saved beside the params ``directory`` (a compact or prune output's
  ``model_state/``: its BatchNorms' running statistics), else ``model_state``.

  A run from a compact output thus starts from the compact model's function, running
  statistics included.

  Args:
    directory: ``init_params`` (see :func:`restore_init_params`), or "".
    model_state: the model's fresh state (``{}``: none): the structure and shapes the
      saved one must have.

  Raises:
    InitParamsError: the saved state does not fit the model.
  """
  saved = Path(directory).absolute().parent / run_folder.MODEL_STATE
  if not directory or not model_state or not saved.is_dir():
    return model_state
  restored, problem = _restore_fitting(saved, model_state)
  if problem is not None:
    raise InitParamsError(
      f"--init-params {directory}: the {run_folder.MODEL_STATE}/ beside it does not fit the "
      f"model: {problem}"
    )
  return restored


def _restore_fitting(path: Path, template: Any) -> tuple[Any, str | None]:
  """``(the tree saved at path, None)``, or ``(None, why)`` where it does not fit ``template``'s
  structure, shapes and dtypes, or cannot be read."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  try:
    with quiet_abandoned_coroutines(), ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(path)  # as saved: the check below compares shapes
    return restored, fit_problem(restored, abstract)
  except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many kinds on bad files
    return None, first_line(e)


def _check_source_model(directory: str, config: Any) -> None:
  """Raises :class:`InitParamsError` where the source's ``config.json`` has other model keys.

  Shapes alone miss an activation (``--relu``), a pooling or a patch size: params trained
  with them compute another function in this run's model. A source without ``config.json``
  (params saved by other means) is checked on shapes only, with a warning.
  """
  source = Path(directory).absolute().parent / run_folder.CONFIG
  if not source.is_file():
    print(
      f"warning: --init-params {directory}: no {source.name} beside it; only the shapes of "
      "its params are checked against this run's model",
      file=sys.stderr,
    )
    return
  try:
    saved = run_folder.read_config(source)
  except run_folder.NotARunError as e:
    raise InitParamsError(f"--init-params {directory}: {e}") from None
  shown = config_checks.format_value
  keys = models.model_keys(config)
  differing = [k for k in keys if shown(saved[k]) != shown(config[k])]
  if differing:
    changes = ", ".join(
      f"{config_checks.flag(k)} {shown(saved[k])} (here {shown(config[k])})" for k in differing
    )
    raise InitParamsError(
      f"--init-params {directory} was saved from a model with {changes} ({source}); pass "
      "the source's model flags"
    )
