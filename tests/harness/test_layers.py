"""The harness's modules import one another without a circle, and each names its one job."""

import ast
import pathlib

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"
MODULES = sorted(p.stem for p in EXPERIMENTS.glob("*.py") if p.stem != "__init__")


def imported(module: str) -> set[str]:
  """The ``experiments`` modules ``module`` imports, at the top or inside a function."""
  tree = ast.parse((EXPERIMENTS / f"{module}.py").read_text())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "experiments":
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("experiments."):
      names.add(node.module.split(".")[1])
  return names & set(MODULES)


def test_no_import_circle():
  graph = {m: imported(m) for m in MODULES}
  done, path = set(), []

  def visit(module):
    if module in path:
      raise AssertionError(" -> ".join([*path[path.index(module) :], module]))
    if module not in done:
      path.append(module)
      for other in sorted(graph[module]):
        visit(other)
      path.pop()
      done.add(module)

  for module in MODULES:
    visit(module)


@pytest.mark.parametrize("module", MODULES)
def test_module_is_small_and_says_its_job(module):
  text = (EXPERIMENTS / f"{module}.py").read_text()
  assert ast.get_docstring(ast.parse(text)), f"{module} has no docstring"
  assert text.count("\n") <= 450, f"{module} has over 450 lines"
