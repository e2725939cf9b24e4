"""The notebooks run top to bottom on a CPU with small settings, on the real MNIST files.

Every notebook has a cell tagged ``parameters`` (papermill's convention) defining at least
``INSTALL``, ``RAW_DIR`` and ``DATA_DIR``. The test inserts a cell after it that sets
``INSTALL = False``, points the data at the local raw MNIST files and a fresh TFDS data_dir,
puts the repository root on ``sys.path``, sets ``WORKDIR`` to a fresh temporary folder (for
notebooks that write run directories) and shrinks the run. A new notebook is one more entry
in ``NOTEBOOKS``.
"""

from __future__ import annotations

import pathlib
import re
import time
from typing import Any

import nbformat
import pytest
from conftest import users_env
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

# One xdist worker runs this file (--dist loadgroup): data_dir is prepared once.
pytestmark = pytest.mark.xdist_group("notebooks")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
# Outside the repository: ../shared/data/mnist in CI, read-only.
CELL_TIMEOUT_S = 600

# (notebook, its small CPU settings on top of INSTALL, RAW_DIR and DATA_DIR)
# and a check of a value it prints: compaction keeps the logits; both runs reach the end.
NOTEBOOKS = [
  pytest.param(
    "quickstart.ipynb",
    {"TRAIN_SIZE": 1000, "STEPS": 30, "EVAL_EVERY": 10, "BATCH": 100, "NNX_STEPS": 5},
    (r"largest change of a test logit: (\S+)", lambda found: float(found[0]) < 1e-3),
    id="quickstart",
  ),
  pytest.param(
    "colab_tpu_mnist.ipynb",
    {"TOTAL_ITER": 40, "LOG_FREQ": 20, "BATCH": 200},
    (
      r"(?m)^(?:pathprox|wd): step (\d+), test accuracy ([\d.]+)%",
      lambda found: len(found) == 2 and all(s == "40" and 10 < float(a) <= 100 for s, a in found),
    ),
    id="colab_tpu_mnist",
  ),
]


def parameters_index(notebook: nbformat.NotebookNode) -> int:
  """The index of the cell tagged ``parameters``."""
  tagged = [
    i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])
  ]
  if len(tagged) != 1:
    raise ValueError(f"expected one cell tagged 'parameters', found {len(tagged)}")
  return tagged[0]


def inject_parameters(notebook: nbformat.NotebookNode, parameters: dict[str, Any]) -> None:
  """Inserts a cell after the parameters cell that overrides them, as papermill does."""
  lines = ["import sys", f"sys.path.insert(0, {str(REPO_ROOT)!r})"]
  lines += [f"{name} = {value!r}" for name, value in parameters.items()]
  cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
  notebook.cells.insert(parameters_index(notebook) + 1, cell)


def run_notebook(path: pathlib.Path, parameters: dict[str, Any]) -> tuple[float, str]:
  """Executes a notebook in a python3 kernel with cwd = the repo root, compiling as a user's
  process does (`users_env`: they train on real MNIST, where running is most of the time).

  Returns:
    Its seconds, and the text its cells printed.

  Raises:
    CellExecutionError: a cell failed (the message holds its source and traceback).
  """
  notebook = nbformat.read(path, as_version=4)
  inject_parameters(notebook, parameters)
  client = NotebookClient(
    notebook,
    timeout=CELL_TIMEOUT_S,
    kernel_name="python3",
    resources={"metadata": {"path": str(REPO_ROOT)}},
  )
  start = time.perf_counter()
  client.execute(env=users_env())
  seconds = time.perf_counter() - start
  printed = [
    output.get("text", "")
    for cell in notebook.cells
    for output in cell.get("outputs", [])
    if output.get("output_type") == "stream"
  ]
  return seconds, "".join(printed)


@pytest.mark.slow  # starts a kernel and trains on real MNIST
@pytest.mark.parametrize("name, settings, check", NOTEBOOKS)
def test_notebook_runs(
  name, settings, check, real_mnist, real_mnist_data_dir, tmp_path, record_property, capsys
):
  parameters = {
    "INSTALL": False,
    "RAW_DIR": str(real_mnist),
    "DATA_DIR": str(real_mnist_data_dir),  # MNIST prepared once
    "WORKDIR": str(tmp_path / "runs"),
  }
  seconds, printed = run_notebook(NOTEBOOK_DIR / name, {**parameters, **settings})
  record_property("notebook_seconds", seconds)
  pattern, holds = check
  found = re.findall(pattern, printed)
  assert found and holds(found), f"{name} printed {found} for {pattern!r}"
  with capsys.disabled():
    print(f"\n{name} ran in {seconds:.1f}s")


@pytest.mark.parametrize("path", sorted(NOTEBOOK_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_committed_clean(path):
  """Committed without outputs, with one parameters cell defining the injected names."""
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert all(not cell.outputs and cell.execution_count is None for cell in code)
  parameters = notebook.cells[parameters_index(notebook)].source
  for name in ("INSTALL", "RAW_DIR", "DATA_DIR"):
    assert f"\n{name} = " in f"\n{parameters}", f"{path.name}: no {name} in the parameters cell"


@pytest.mark.slow  # starts a kernel
def test_failing_cell_fails_the_run(tmp_path):
  notebook = nbformat.v4.new_notebook(
    cells=[
      nbformat.v4.new_code_cell("INSTALL = True", metadata={"tags": ["parameters"]}),
      nbformat.v4.new_code_cell("assert not INSTALL\nimport experiments\nraise ValueError('x')"),
    ],
    metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
  )
  path = tmp_path / "failing.ipynb"
  nbformat.write(notebook, path)
  with pytest.raises(CellExecutionError) as failure:
    run_notebook(path, {"INSTALL": False})
  assert (failure.value.ename, failure.value.evalue) == ("ValueError", "x")
