"""One-line ``ValueError`` checks of the library's numeric arguments, made where they are given.

A concrete value is checked when a transform is built or a function is called; a schedule (where
one is allowed) and a traced value (``optax.inject_hyperparams`` under ``jit``, a threshold
computed inside a jitted step) cannot be, and pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def check_hyperparameter(
  name: str,
  value: Any,
  requirement: str,
  is_valid: Callable[[float], bool],
  *,
  schedule: bool = True,
  scalar: bool = True,
) -> None:
  """Raises a one-line ``ValueError`` unless a concrete ``value`` is finite and ``is_valid``.

  Schedules (when ``schedule``) and traced values (``optax.inject_hyperparams`` under ``jit``)
  cannot be checked and pass. Strings and ``None`` are refused even where they would convert
  (``"0.1"``): optax would fail on them at update time.

  Args:
    name: the argument's name, for the message.
    value: the argument.
    requirement: what ``is_valid`` asks, for the message (e.g. ``"finite and > 0"``).
    is_valid: the test of a finite float.
    schedule: ``value`` may be a schedule.
    scalar: ``value`` must be one number (else an array of them, each checked).
  """
  if schedule and callable(value):
    return
  kind = "a number or a schedule" if schedule else "a number" if scalar else "a number or an array"
  if value is None or isinstance(value, (str, bytes)):
    raise ValueError(f"PathProx {name} must be {kind}, got {value!r}.")
  try:
    numbers = np.asarray(value, np.float64)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return
  except (TypeError, ValueError) as error:
    raise ValueError(f"PathProx {name} must be {kind}, got {value!r}.") from error
  if scalar and numbers.size != 1:
    raise ValueError(f"PathProx {name} must be {kind}, got an array of shape {numbers.shape}.")
  for number in numbers.ravel().tolist():
    if not (math.isfinite(number) and is_valid(number)):
      raise ValueError(f"PathProx {name} must be {requirement}, got {number}.")
