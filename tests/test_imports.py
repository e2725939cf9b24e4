"""The layout's rules: the import graph of the library and the harness has no circle, the
library imports nothing of the harness, and no module outgrows its cap."""

from __future__ import annotations

import ast
import pathlib

import pytest
from conftest import REPO as REPO_ROOT

PACKAGES = ("pathprox_jax", "experiments", "configs")
LINE_CAPS = {"pathprox_jax/_src": 400, "experiments": 450}


def module_files() -> dict[str, pathlib.Path]:
  """``{dotted module name: file}`` of every module of the packages."""
  files = {}
  for package in PACKAGES:
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
      parts = path.relative_to(REPO_ROOT).with_suffix("").parts
      files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return files


def imported(name: str, path: pathlib.Path, modules: set[str]) -> set[str]:
  """The modules of ``modules`` that ``name`` imports, anywhere in its file (in functions too)."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      for alias in node.names:  # `from package import module` names the module
        full = f"{base}.{alias.name}"
        found.add(full if full in modules else base)
  return (found & modules) - {name}


def import_graph() -> dict[str, set[str]]:
  files = module_files()
  return {name: imported(name, path, set(files)) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Each import circle found by a depth-first walk, as the modules around it."""
  found, state, stack = [], {}, []

  def walk(module: str) -> None:
    state[module] = "open"
    stack.append(module)
    for target in sorted(graph[module]):
      if state.get(target) == "open":
        found.append([*stack[stack.index(target) :], target])
      elif target not in state:
        walk(target)
    stack.pop()
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      walk(module)
  return found


def test_circles_are_found():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert circles(graph) == [["a", "b", "c", "a"]]
  assert circles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_circle():
  graph = import_graph()
  assert "pathprox_jax._src.transform" in graph["pathprox_jax._src.alias"]  # the graph is read
  assert circles(graph) == []


def test_the_library_imports_nothing_of_the_harness():
  graph = import_graph()
  assert "experiments.cli" in graph["experiments.sweep"]
  upward = {m: sorted(t for t in graph[m] if not t.startswith("pathprox_jax")) for m in graph}
  assert {m: t for m, t in upward.items() if m.startswith("pathprox_jax") and t} == {}


@pytest.mark.parametrize("folder, cap", LINE_CAPS.items())
def test_no_module_outgrows_its_cap(folder, cap):
  lines = {p.name: len(p.read_text().splitlines()) for p in (REPO_ROOT / folder).glob("*.py")}
  assert lines and {name: n for name, n in lines.items() if n > cap} == {}
