"""Figures and report.md name each run by what differs among the runs shown.

Method, optimiser, λ, threshold rule and seed come from each run's ``config.json``; a key
that all the runs shown share names nothing. Checked on the names, on the figures' legends
and on report.md's table, through ``python -m experiments.plot``'s ``main``.
"""

import pytest
from test_plot import TOTAL, parse_table, run_main, write_run

from experiments import entries as entries_lib
from experiments import plot

SGD = {"optimizer": "sgd", "threshold_rule": "fixed_point", "weight_decay": 0.01, "seed": 0}


@pytest.mark.parametrize(
  "changes, names",
  [
    ([{}, {"weight_decay": 0.05}], ["PathProx λ=0.01", "PathProx λ=0.05"]),
    ([{}, {"optimizer": "adamw"}], ["PathProx SGD", "PathProx AdamW"]),
    ([{}, {"threshold_rule": "paper"}], ["PathProx τ=λγ/(1−β)", "PathProx τ=λγ"]),
    ([{}, {"seed": 3}], ["PathProx seed 0", "PathProx seed 3"]),
    ([{}, {"method": "wd"}], ["PathProx", "Weight decay"]),
    (
      [{}, {"optimizer": "adamw", "weight_decay": 0.05}, {"method": "wd", "seed": 1}],
      [
        "PathProx SGD λ=0.01 seed 0",
        "PathProx AdamW λ=0.05 seed 0",
        "Weight decay SGD λ=0.01 seed 1",
      ],
    ),  # fmt: skip
    # A weight-decay run has no threshold rule: its recorded default tells nothing apart.
    ([{"threshold_rule": "paper"}, {"method": "wd"}], ["PathProx", "Weight decay"]),
    ([{}, {}], ["PathProx", "PathProx"]),  # nothing differs: the path tells them apart
  ],
)
def test_a_run_is_named_by_the_keys_that_differ(changes, names):
  configs = [{"method": "pathprox", **SGD, **change} for change in changes]
  assert entries_lib.run_names(configs) == names


def test_the_legends_and_the_report_name_each_lambda_and_optimiser(tmp_path):
  runs = {
    "a": {"weight_decay": 0.01},
    "b": {"weight_decay": 0.05},
    "c": {"weight_decay": 0.05, "optimizer": "adamw"},
  }
  for name, change in runs.items():
    write_run(tmp_path / name, "pathprox", TOTAL, 0.0, **{**SGD, **change})
  out = tmp_path / "out"
  code, _, err = run_main([*(tmp_path / name for name in runs), "--out", out])
  assert code == 0, err
  names = ["PathProx SGD λ=0.01", "PathProx SGD λ=0.05", "PathProx AdamW λ=0.05"]
  table = parse_table((out / "report.md").read_text())
  assert [run for at, run in table if at == "last"] == names
  entries = [e for name in runs for e in entries_lib.load_entries(tmp_path / name)]
  figure = plot._draw(entries, [plot._Curve("test_acc", "test", "-", 1.8)], "", "")
  assert [text.get_text() for text in figure.legends[0].get_texts()] == names


def test_sweeps_over_lambda_are_named_by_their_lambda_and_seed_count(tmp_path):
  for weight_decay in (0.01, 0.05):
    for seed in (0, 1):
      folder = tmp_path / "sweep" / f"wd{weight_decay:g}-seed{seed}"
      write_run(folder, "pathprox", TOTAL, seed, **{**SGD, "weight_decay": weight_decay,
                                                   "seed": seed})  # fmt: skip
  write_run(tmp_path / "wd", "wd", TOTAL, 1.0, **SGD)
  entries = entries_lib.load_entries(tmp_path / "sweep") + entries_lib.load_entries(tmp_path / "wd")
  assert entries_lib.labels(entries) == [
    "PathProx λ=0.01 (2 seeds)", "PathProx λ=0.05 (2 seeds)", "Weight decay λ=0.01",
  ]  # fmt: skip
