"""One config per paper experiment: ``configs.<experiment>.get_config()``, and its loading.

:func:`load_config` imports a config by name; :func:`key_descriptions` reads each key's
description (its trailing comment). Both sit here, below every harness module, so that the
run-folder reader and the command line can share them.
"""

from __future__ import annotations

import importlib
import io
import tokenize
from pathlib import Path

import ml_collections


class ConfigError(ValueError):
  """A command-line or config value is not usable."""


def load_config(experiment: str) -> ml_collections.ConfigDict:
  """``configs.<experiment>.get_config()``."""
  try:
    module = importlib.import_module(f"configs.{experiment}")
  except ModuleNotFoundError as e:
    raise ConfigError(f"unknown experiment {experiment!r}: no configs/{experiment}.py") from e
  return module.get_config()


def key_descriptions(experiment: str) -> dict[str, str]:
  """Each config key's trailing comment in ``configs/common.py``, else in the experiment's file."""
  descriptions: dict[str, str] = {}
  folder = Path(__file__).parent
  for name in (experiment, "common"):  # common last: its comments describe the key itself
    path = folder / f"{name}.py"
    if not path.is_file():
      continue
    lines: dict[int, list[tokenize.TokenInfo]] = {}
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
      lines.setdefault(token.start[0], []).append(token)
    for tokens in lines.values():
      text = [t.string for t in tokens[:4]]
      if text[:2] == ["config", "."] and len(text) == 4 and text[3] == "=":
        comments = [t.string for t in tokens if t.type == tokenize.COMMENT]
        if comments:
          descriptions[text[2]] = comments[-1].lstrip("#").strip()
  return descriptions
