"""The documentation's Python blocks run, in order, one namespace per page."""

from __future__ import annotations

import pathlib
import re
import sys
import traceback
import types

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# A fenced block opens with ```python at the start of a line and closes with the next ```.
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
  """The ```python blocks of a Markdown page as ``(line of the first code line, code)``."""
  return [
    (text.count("\n", 0, match.start(1)) + 1, match.group(1))
    for match in PYTHON_BLOCK.finditer(text)
  ]


def run_page(path: pathlib.Path) -> None:
  """Executes a page's Python blocks in order in one namespace; fails naming the block's line."""
  # A registered module, as a script's __main__ is: dataclasses (linen modules) look it up.
  module = types.ModuleType(f"docs_page_{path.stem}")
  sys.modules[module.__name__] = module
  try:
    for line, code in python_blocks(path.read_text()):
      # Padding with newlines makes tracebacks report the line numbers of the page itself.
      source = "\n" * (line - 1) + code
      try:
        exec(compile(source, str(path), "exec"), module.__dict__)
      except Exception:
        pytest.fail(
          f"{path.relative_to(REPO_ROOT)}: the python block at line {line} failed:\n"
          f"{traceback.format_exc()}",
          pytrace=False,
        )
  finally:
    del sys.modules[module.__name__]


def pages_with_code() -> list[pathlib.Path]:
  pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
  return [p for p in pages if p.exists() and python_blocks(p.read_text())]


def heading_anchor(heading: str) -> str:
  """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(path: pathlib.Path) -> list[str]:
  """The page's in-page anchors without a heading and relative links to missing files."""
  text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.DOTALL | re.MULTILINE)
  anchors = {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
  broken = []
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if target.startswith("#"):
      if target[1:] not in anchors:
        broken.append(target)
    elif "://" not in target and not (path.parent / target.split("#")[0]).exists():
      broken.append(target)
  return broken


@pytest.mark.parametrize("page", sorted((REPO_ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_links_resolve(page):
  assert broken_links(page) == []


# The guide's 30 blocks compile many small models and steps: the longest page, `slow`.
SLOW_PAGES = {REPO_ROOT / "docs" / "guide.md"}


@pytest.mark.parametrize(
  "page",
  [
    pytest.param(page, marks=[pytest.mark.slow] if page in SLOW_PAGES else [])
    for page in pages_with_code()
  ],
  ids=lambda p: str(p.relative_to(REPO_ROOT)),
)
def test_page_runs(page):
  run_page(page)
