"""Figures and report.md from run directories written by the test itself."""

import contextlib
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from experiments import entries as entries_lib
from experiments import plot, report, run_folder

# One xdist worker runs this file (--dist loadgroup): its folders and figures are made once.
pytestmark = pytest.mark.xdist_group("plot")

REPO = Path(__file__).resolve().parents[2]
TOTAL = 20_000
GROUPS = (0, 1, 2)
# The documented precision of each report column, as an absolute or relative tolerance.
COLUMNS = {
  "wd objective": ("wd_objective", 1, {"rel_tol": 5e-4}),
  "path norm": ("path_norm", 1, {"rel_tol": 5e-4}),
  "active units (%)": ("active_units_pct", 1, {"abs_tol": 0.05}),
  "train acc (%)": ("train_acc", 100, {"abs_tol": 0.005}),
  "test acc (%)": ("test_acc", 100, {"abs_tol": 0.005}),
  "val acc (%)": ("val_acc", 100, {"abs_tol": 0.005}),
}


def metrics_row(method: str, step: int, offset: float) -> dict:
  """A row whose values all change from one step to the next, with many digits."""
  t = step / TOTAL
  loss = 2.3 * math.exp(-4 * t) + 0.0123 * (1 + offset)
  row = {
    "step": step,
    "method": method,
    "lr": 0.3,
    "wall_time": 0.01 * step,
    "train_loss": loss,
    "train_acc": 0.5 + 0.41237 * t,
    "val_loss": loss * 1.1,
    "val_acc": 0.45 + 0.40111 * t,
    "test_loss": loss * 1.2,
    "test_acc": 0.4 + 0.43219 * t - 0.01 * offset,
    "wd_objective": loss + 0.0456789 * (1 + offset),
    "path_norm": 456.789 / (1 + 3 * t) + offset,
    "active_units": 1200 - int(600 * t),
    "active_units_pct": 100 - 43.21 * t - offset,
  }
  for g in GROUPS:
    row[f"path_norm/g{g}"] = row["path_norm"] / 3
    row[f"active_units/g{g}"] = 400 - int(200 * t * (g + 1) / 3)
    row[f"active_units_pct/g{g}"] = 100 - 50 * t * (g + 1) / 3
  return row


def write_folder(path: Path, method: str, rows: list, tail: str = "", **config) -> list:
  """A run directory with these metrics rows; ``tail`` is appended raw, ``config`` added."""
  path.mkdir(parents=True)
  config = {
    "experiment": "mnist_subset_mlp",
    "method": method,
    "total_iter": TOTAL,
    "log_freq": 2500,
    "command": f"python -m experiments.mnist_subset_mlp --workdir {path} --method {method}",
    "pathprox_jax_version": "0.1.0",
    "devices": "8 x cpu",
    "groups": list(GROUPS),
    **config,
  }
  (path / "config.json").write_text(json.dumps(config))
  lines = [json.dumps(row) + "\n" for row in rows]
  (path / "metrics.jsonl").write_text("".join(lines) + tail)
  return rows


def write_run(
  path: Path, method: str, last_step: int, offset: float, tail: str = "", **config
) -> list:
  """A run directory logged every 2,500 steps up to ``last_step``."""
  rows = [metrics_row(method, step, offset) for step in range(0, last_step + 1, 2500)]
  return write_folder(path, method, rows, tail, **config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A finished PathProx run, a finished weight-decay run and a PathProx run in progress."""
  root = tmp_path_factory.mktemp("runs")
  partial = root / "partial" / "pathprox"
  rows = {
    root / "cmp" / "pathprox": write_run(root / "cmp" / "pathprox", "pathprox", TOTAL, 0.0),
    root / "cmp" / "wd": write_run(root / "cmp" / "wd", "wd", TOTAL, 1.0),
    # A malformed line, then a last line cut off mid-write as by a run still logging.
    partial: write_run(partial, "pathprox", 7500, 2.0, tail='{"step": oops}\n{"step": 10000, "tr'),
  }
  return rows


def run_main(argv):
  """``plot.main(argv)`` -> (exit code, stdout, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = plot.main([str(a) for a in argv])
  return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def produced(runs, tmp_path_factory):
  out = tmp_path_factory.mktemp("out")
  notes = tmp_path_factory.mktemp("notes") / "findings.md"
  notes.write_text("PathProx switched off most units.\n")
  argv = [*runs, "--out", out, "--at", "6000,10000,50000", "--notes", notes]
  code, stdout, stderr = run_main(argv)
  assert code == 0, stderr
  return out, stdout, stderr


def parse_table(report: str) -> dict:
  """{(at, run): {column: cell}} from the report's markdown table."""
  lines = [line for line in report.splitlines() if line.startswith("|")]
  header = [cell.strip() for cell in lines[0].strip("|").split("|")]
  table = {}
  for line in lines[2:]:
    cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
    table[cells["at"], cells["run"]] = cells
  return table


def test_figures_are_valid_pngs_and_no_temporary_files_remain(produced):
  out, stdout, _ = produced
  assert sorted(p.name for p in out.iterdir()) == sorted([*report.FIGURES, "report.md"])
  for name in report.FIGURES:
    path = out / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000
    pixels = image.imread(path)
    assert pixels.shape[1] > 800 and np.std(pixels[..., :3]) > 0.05
    assert f"wrote {path}" in stdout


def test_report_table_holds_the_metrics_at_each_iteration(runs, produced):
  out, _, _ = produced
  table = parse_table((out / "report.md").read_text())
  complete, wd, partial = runs
  names = {
    complete: "PathProx (cmp/pathprox)",
    wd: "Weight decay",
    partial: "PathProx (partial/pathprox)",
  }
  # 50,000 is beyond every run's total_iter, so it has no rows.
  assert {at for at, _ in table} == {"6000", "10000", "last"}
  expected = {
    # 6,000 was not logged: the last row before it (5,000) stands for it.
    ("6000", complete): 2, ("6000", wd): 2, ("6000", partial): 2,
    ("10000", complete): 4, ("10000", wd): 4, ("10000", partial): None,
    ("last", complete): 8, ("last", wd): 8, ("last", partial): 3,
  }  # fmt: skip
  for (at, path), index in expected.items():
    cells = table[at, names[path]]
    assert cells["method"] == runs[path][0]["method"]
    if index is None:  # the run in progress has not reached 10,000
      assert set(cells.values()) - {at, names[path], "pathprox"} == {report.MISSING}
      continue
    row = runs[path][index]
    assert int(cells["step"]) == row["step"]
    for column, (key, scale, tolerance) in COLUMNS.items():
      assert math.isclose(float(cells[column]), scale * row[key], **tolerance), (at, path, column)


def test_notes_become_the_findings_section(produced):
  out, _, _ = produced
  report = (out / "report.md").read_text()
  assert "## Findings\n\nPathProx switched off most units.\n" in report
  assert report.index("## Findings") > report.index("| last |")


def test_incomplete_runs_and_malformed_lines_are_reported(runs, produced):
  out, stdout, stderr = produced
  partial = list(runs)[2]
  assert stdout.count("incomplete:") == 1
  assert f"incomplete: PathProx (partial/pathprox) ({partial}): step 7500 of {TOTAL}" in stdout
  report = (out / "report.md").read_text()
  incomplete = report.split("## Incomplete runs")[1]
  assert str(partial) in incomplete and "step 7500 of 20000" in incomplete
  assert "cmp" not in incomplete
  for path in runs:
    assert f"python -m experiments.mnist_subset_mlp --workdir {path}" in report
  assert "pathprox_jax 0.1.0 on 8 x cpu" in report
  warnings = stderr.splitlines()
  metrics = partial / "metrics.jsonl"
  assert warnings == [
    f"warning: {metrics}:5: skipped a malformed metrics line",
    f"warning: {metrics}:6: skipped a malformed metrics line",
  ]


@pytest.mark.parametrize(
  "broken, message",
  [
    ("no metrics.jsonl", "no metrics.jsonl"),
    ("no config.json", "no config.json"),
    ("empty", "metrics.jsonl has no rows"),
    ("missing", "no such directory"),
  ],
)
def test_not_a_run_is_a_one_line_error_and_out_is_untouched(
  runs, produced, tmp_path, broken, message
):
  bad = tmp_path / "bad"
  if broken != "missing":
    bad.mkdir()
  if broken in ("no metrics.jsonl", "empty"):
    (bad / "config.json").write_text(json.dumps({"method": "wd", "total_iter": 10}))
  if broken in ("no config.json", "empty"):
    (bad / "metrics.jsonl").write_text("" if broken == "empty" else '{"step": 0}\n')
  out, _, _ = produced
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  code, stdout, stderr = run_main([list(runs)[0], bad, "--out", out])
  assert code == 2 and stdout == ""
  assert len(stderr.splitlines()) == 1 and str(bad) in stderr and message in stderr
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_command_line_reports_a_folder_that_is_not_a_run(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  result = subprocess.run(
    [sys.executable, "-m", "experiments.plot", str(empty), "--out", str(tmp_path / "out")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2
  assert result.stderr.strip() == (
    f"error: {empty} is not a run directory: no config.json and no metrics.jsonl"
  )
  assert not (tmp_path / "out").exists()


def test_a_failed_write_keeps_the_previous_file(tmp_path):
  path = tmp_path / "report.md"
  path.write_text("previous")

  def write_half_then_fail(tmp):
    tmp.write_text("half")
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    run_folder.write_atomic(path, write_half_then_fail)
  assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
  assert path.read_text() == "previous"


def test_metrics_that_are_not_utf8_are_a_one_line_error_and_nothing_is_written(runs, tmp_path):
  bad = tmp_path / "bad"
  write_run(bad, "wd", 5000, 0.0, tail='{"step": 7500, "note": "caf\xe9"}\n')
  text = (bad / "metrics.jsonl").read_text()
  (bad / "metrics.jsonl").write_bytes(text.encode("latin-1"))  # é as the single byte 0xe9
  out = tmp_path / "out"
  code, stdout, stderr = run_main([list(runs)[0], bad, "--out", out])
  assert code == 2 and stdout == ""
  assert stderr.splitlines() == [
    f"error: {bad / 'metrics.jsonl'} is not UTF-8 text (byte 0xe9 at offset "
    f"{text.index(chr(0xE9))}): the file is damaged; restore it or remove the run"
  ]
  assert not out.exists()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  """A 3-seed PathProx sweep over two weight decays, and a folder of 2 seeds of one λ."""
  root = tmp_path_factory.mktemp("sweeps")
  rows = {}
  for wd in (1e-4, 3e-4):
    for seed, offset in ((0, 0.0), (1, 1.0), (2, 2.0)):
      name = run_folder.member_name(seed, wd)
      rows[name] = write_run(root / "lambdas" / name, "pathprox", TOTAL, offset + 10 * wd / 1e-4)
  for seed in (3, 10):  # seed order is numeric: seed3 before seed10
    rows[f"seed{seed}"] = write_run(root / "seeds" / f"seed{seed}", "wd", TOTAL, seed / 10)
  (root / "seeds" / "notes").mkdir()  # no member: ignored
  return root, rows


def test_sweep_is_drawn_as_its_mean_with_a_band_and_tabulated_with_its_spread(sweep, tmp_path):
  root, rows = sweep
  entries = entries_lib.load_entries(root / "lambdas") + entries_lib.load_entries(root / "seeds")
  assert [e.weight_decay for e in entries] == ["0.0001", "0.0003", ""]
  assert [[run.path.name for run in e.runs] for e in entries][2] == ["seed3", "seed10"]
  assert entries_lib.labels(entries) == [
    "PathProx λ=0.0001 (3 seeds)", "PathProx λ=0.0003 (3 seeds)", "Weight decay (2 seeds)",
  ]  # fmt: skip
  steps, values = entries[0].curve("path_norm")
  members = ["wd0.0001-seed0", "wd0.0001-seed1", "wd0.0001-seed2"]
  assert steps.tolist() == [row["step"] for row in rows[members[0]]]
  np.testing.assert_array_equal(values, [[r["path_norm"] for r in rows[m]] for m in members])

  out = tmp_path / "out"
  code, stdout, stderr = run_main([root / "lambdas", root / "seeds", "--out", out])
  assert code == 0, stderr
  table = parse_table((out / "report.md").read_text())
  cell = table["10000", "PathProx λ=0.0003 (3 seeds)"]["path norm"]
  at_10k = [rows[f"wd0.0003-seed{s}"][4]["path_norm"] for s in range(3)]
  mean, low, high = (float(v) for v in re.fullmatch(r"(\S+) \((\S+)–(\S+)\)", cell).groups())
  for shown, value in ((mean, sum(at_10k) / 3), (low, min(at_10k)), (high, max(at_10k))):
    assert math.isclose(shown, value, rel_tol=5e-4)
  assert table["last", "Weight decay (2 seeds)"]["step"] == str(TOTAL)
  assert sorted(p.name for p in out.iterdir()) == sorted([*report.FIGURES, "report.md"])


def test_band_spans_the_runs_min_and_max(sweep):
  root, _ = sweep
  (entry,) = entries_lib.load_entries(root / "seeds")
  figure = plot._draw([entry], [plot._Curve("test_acc", "test", "-", 1.8, band=True)], "", "")
  (band,) = figure.axes[0].collections
  steps, values = entry.curve("test_acc")
  vertices = band.get_paths()[0].vertices
  assert (vertices[:, 0].min(), vertices[:, 0].max()) == (steps[0], steps[-1])
  assert math.isclose(vertices[:, 1].min(), values.min())
  assert math.isclose(vertices[:, 1].max(), values.max())
  (line,) = figure.axes[0].lines
  np.testing.assert_allclose(line.get_ydata(), values.mean(0))
  styles = [text.get_text() for text in figure.legends[1].get_texts()]
  assert styles == ["test", "min–max over seeds"]


PAIRED_TOTAL = 30_000
# Per seed: where PathProx's objective gets below weight decay's, where it gets back
# above, its active units (%) and test accuracy from 10,000 on.
PATHPROX_SEEDS = {0: (6500, 24000, 35.0, 0.900), 1: (7250, 25000, 36.0, 0.901),
                  2: (5750, 26000, 37.0, 0.902), 3: (6000, 24000, 38.0, 0.903),
                  4: (6500, 25000, 39.0, 0.904)}  # fmt: skip
DIVERGED = {3: 41, 2: 25000}  # PathProx seed3 diverges at once, seed2 late (after 20,000)


def paired_row(method: str, step: int, seed: int) -> dict:
  """A row whose PathProx − weight decay objective is linear between its crossings."""
  below, back, units, accuracy = PATHPROX_SEEDS[seed]
  gap = 1e-5 * ((below - step) if step < 15000 else (step - back))
  late = step >= 10000
  if method == "wd":
    gap, units, accuracy = 0.0, 100.0, 0.88
  return {"step": step, "method": method, "wd_objective": 1.0 + gap, "train_loss": 0.5 + gap,
          "active_units_pct": units if late else 100.0, "test_acc": accuracy if late else 0.5,
          "train_acc": 1.0, "path_norm": 100.0 + gap}  # fmt: skip


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
  """PathProx seeds 0-4 (seed3 diverged at step 41, seed2 at 25,000), weight decay seeds 0-3."""
  root = tmp_path_factory.mktemp("paired")
  for method, seeds in (("pathprox", range(5)), ("wd", range(4))):
    for seed in seeds:
      diverged = DIVERGED.get(seed) if method == "pathprox" else None
      end = PAIRED_TOTAL if diverged is None else diverged - 1
      rows = [paired_row(method, step, seed) for step in range(0, end + 1, 1000)]
      if diverged == 41:  # its only row is far from the others: the band must not show it
        rows[0] |= {"wd_objective": 50.0, "test_acc": 0.01}
      loss = "nan" if diverged == 41 else "non-finite parameters"
      marker = {} if diverged is None else {"diverged": {"step": diverged, "loss": loss}}
      write_folder(root / method / f"seed{seed}", method, rows, seed=seed,
                   total_iter=PAIRED_TOTAL, log_freq=1000, **marker)  # fmt: skip
  return root


def test_diverged_members_are_left_out_of_the_mean_and_band_and_named(paired, tmp_path):
  (entry,) = entries_lib.load_entries(paired / "pathprox")
  assert [run.diverged_at for run in entry.runs] == [None, None, 25000, 41, None]
  assert [run.seed for run in entry.drawn] == [0, 1, 4]
  label = "PathProx (3 of 5 seeds; seed2 diverged at step 25000, seed3 diverged at step 41)"
  assert entries_lib.labels([entry]) == [label]
  figure = plot._draw([entry], [plot._Curve("wd_objective", "", "-", 1.8, band=True)], "", "")
  (legend,) = figure.legends[0].get_texts()  # one line per note, to spare the axes
  assert legend.get_text() == label.replace("; ", ";\n")
  (band,) = figure.axes[0].collections
  vertices = band.get_paths()[0].vertices
  assert vertices[:, 0].max() == PAIRED_TOTAL  # not cut short by the diverged members' rows
  members = [[paired_row("pathprox", s, seed)["wd_objective"] for s in range(0, 30001, 1000)]
             for seed in (0, 1, 4)]  # fmt: skip
  assert math.isclose(vertices[:, 1].max(), np.max(members))  # seed3's 50.0 is not in it
  np.testing.assert_allclose(figure.axes[0].lines[0].get_ydata(), np.mean(members, axis=0))

  out = tmp_path / "out"
  code, stdout, stderr = run_main([paired / "pathprox", "--out", out, "--at", "20000"])
  assert code == 0, stderr
  report = (out / "report.md").read_text()
  assert parse_table(report)["20000", label]["active units (%)"] == "36.7 (35.0–39.0)"
  (line,) = [line for line in report.splitlines() if line.startswith("Diverged")]
  assert f"{paired / 'pathprox' / 'seed2'} at step 25000 (non-finite parameters)" in line
  assert f"{paired / 'pathprox' / 'seed3'} at step 41 (loss nan)" in line
  assert "incomplete:" not in stdout  # the members drawn all finished
  assert stdout.count("diverged: ") == 2
  assert "## Seed statistics" not in report  # one entry: nothing to pair


def test_a_lone_diverged_run_is_drawn_to_its_last_row_and_flagged(tmp_path):
  rows = [metrics_row("pathprox", step, 0.0) for step in range(0, 10001, 2500)]
  rows[-1] |= {"train_loss": math.nan, "wd_objective": math.nan}  # the evaluation that diverged
  write_folder(tmp_path / "run", "pathprox", rows, diverged={"step": 10000, "loss": "nan"})
  (entry,) = entries_lib.load_entries(tmp_path / "run")
  assert entries_lib.labels([entry]) == ["PathProx (diverged at step 10000)"]
  assert entry.curve("path_norm")[0].tolist() == [0, 2500, 5000, 7500, 10000]
  code, stdout, _ = run_main([tmp_path / "run", "--out", tmp_path / "out", "--at", "5000"])
  assert code == 0
  assert "incomplete: PathProx (diverged at step 10000)" in stdout
  assert f"diverged: {tmp_path / 'run'} at step 10000 (loss nan)" in stdout
  table = parse_table((tmp_path / "out" / "report.md").read_text())
  cells = table["last", "PathProx (diverged at step 10000)"]
  assert (cells["step"], cells["wd objective"]) == ("10000", "nan")
  assert float(table["5000", "PathProx (diverged at step 10000)"]["wd objective"]) > 0


def test_a_sweep_still_running_or_all_diverged_is_labelled_as_such(tmp_path):
  for seed, last in ((0, 20000), (1, 5000), (2, 12500)):
    write_run(tmp_path / "running" / f"seed{seed}", "wd", last, seed, seed=seed)
    marker = {"step": last + 7, "loss": "nan"}
    write_run(tmp_path / "lost" / f"seed{seed}", "wd", last, seed, seed=seed, diverged=marker)
  running, lost = entries_lib.load_entries(tmp_path / "running") + entries_lib.load_entries(
    tmp_path / "lost"
  )
  assert running.curve("path_norm")[0].tolist() == [0, 2500, 5000]  # the slowest member's
  assert lost.drawn == lost.runs and lost.last_step == 5000
  assert entries_lib.labels([running, lost]) == [
    "Weight decay (running; 3 seeds)",
    "Weight decay (lost; 3 seeds, all diverged; seed0 diverged at step 20007, "
    "seed1 diverged at step 5007, seed2 diverged at step 12507)",
  ]


def seed_statistics_table(report: str) -> dict[str, list[str]]:
  """{statistic: [cell, n, left out]} from the report's seed statistics section."""
  section = report.split("## Seed statistics")[1].split("\n## ")[0]
  rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
  return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[1:]}


def test_seed_statistics_pair_the_seeds_and_leave_out_the_diverged(paired, tmp_path):
  out = tmp_path / "out"
  argv = [paired / "wd", paired / "pathprox", "--out", out, "--at", "20000,30000"]
  code, _, stderr = run_main(argv)  # weight decay first: PathProx is still the first of the pair
  assert code == 0, stderr
  report = (out / "report.md").read_text()
  assert "seeds 0, 1, 2, 3; unpaired, left out: seed4 (PathProx only)." in report
  table = seed_statistics_table(report)
  diverged3 = "seed3: PathProx diverged at step 41"
  both = f"seed2: PathProx diverged at step 25000; {diverged3}"
  assert table == {
    # seeds 0-2: 6500, 7250, 5750; 24000, 25000 (seed2 diverged before its 26000)
    "wd objective: PathProx first below Weight decay (iteration)":
      ["6500 ± 750 (5750–7250)", "3", diverged3],
    "wd objective: PathProx back above Weight decay (iteration)":
      ["24500 ± 707 (24000–25000)", "2", both],
    "wd objective: crossings by the last common step":
      ["2.0 ± 0.0 (2.0–2.0)", "2", both],
    "active units (%) at 20000: PathProx": ["36.0 ± 1.0 (35.0–37.0)", "3", diverged3],
    "active units (%) at 20000: Weight decay": ["100.0 ± 0.0 (100.0–100.0)", "4", ""],
    "wd objective PathProx / Weight decay at 20000":
      ["0.9500 ± 0.0100 (0.9400–0.9600)", "3", diverged3],
    "test acc (%) at 20000: PathProx": ["90.10 ± 0.10 (90.00–90.20)", "3", diverged3],
    "test acc (%) at 20000: Weight decay": ["88.00 ± 0.00 (88.00–88.00)", "4", ""],
    "active units (%) at 30000: PathProx":
      ["35.5 ± 0.7 (35.0–36.0)", "2", both],
    "active units (%) at 30000: Weight decay": ["100.0 ± 0.0 (100.0–100.0)", "4", ""],
    "wd objective PathProx / Weight decay at 30000":
      ["1.0550 ± 0.0071 (1.0500–1.0600)", "2", both],
    "test acc (%) at 30000: PathProx":
      ["90.05 ± 0.07 (90.00–90.10)", "2", both],
    "test acc (%) at 30000: Weight decay": ["88.00 ± 0.00 (88.00–88.00)", "4", ""],
  }  # fmt: skip


def test_seed_statistics_of_a_sweep_still_running_group_the_seeds_left_out(paired, tmp_path):
  for seed in range(4):  # weight decay has got to 5,000
    rows = [paired_row("wd", step, seed) for step in range(0, 5001, 1000)]
    write_folder(tmp_path / "wd" / f"seed{seed}", "wd", rows, seed=seed,
                 total_iter=PAIRED_TOTAL, log_freq=1000)  # fmt: skip
  out = tmp_path / "out"
  code, _, stderr = run_main([paired / "pathprox", tmp_path / "wd", "--out", out, "--at", "6000"])
  assert code == 0, stderr
  table = seed_statistics_table((out / "report.md").read_text())
  late = "Weight decay not there yet (step 5000)"
  assert table["wd objective PathProx / Weight decay at 6000"] == [
    report.MISSING,
    "0",
    f"seed0, seed1, seed2: {late}; seed3: PathProx diverged at step 41, {late}",
  ]
  assert table["wd objective: PathProx first below Weight decay (iteration)"] == [
    report.MISSING,
    "0",
    "seed0, seed1, seed2: none by step 5000; seed3: PathProx diverged at step 41",
  ]
  diverged = "seed3: PathProx diverged at step 41"
  assert table["test acc (%) at 6000: PathProx"] == ["50.00 ± 0.00 (50.00–50.00)", "3", diverged]
