"""The accuracy–FLOPs front of PathProx against weight decay + magnitude pruning, over seeds.

``python -m experiments.front --pathprox PP_RUN ... --wd WD_RUN ... --out DIR``
reads, for each seed's pair of runs (the i-th ``--pathprox`` with the i-th ``--wd``), the
outputs that :mod:`experiments.compact`, :mod:`experiments.prune` and :mod:`experiments.heal`
wrote next to them (``--compacted LABEL RUN ...``, repeatable, adds one model per label from
its runs' ``RUN/compact/compact.json`` alone, e.g. budget runs, whose switched-off units
compact exactly; without ``--pathprox`` and ``--wd``, the front is those models only):

- ``PP_RUN/compact/compact.json``: PathProx compacted exactly (``--atol 0``);
- ``PP_RUN/<--tolerance-folder>/compact.json`` (optional): compacted with ``--path-norm-tol``;
- ``PP_RUN/compact-heal/heal.json``: the exact compact model healed;
- ``WD_RUN/prune/prune.json``: the weight-decay run pruned by ‖w_i‖‖v_i‖ to the same units;
- ``WD_RUN/prune-heal/heal.json``: the pruned model healed, by the same command.

``--prune-folder NAME`` reads ``WD_RUN/NAME`` and ``WD_RUN/NAME-heal`` instead: one weight-decay
run pruned to match each of several PathProx runs (one front per λ, say).

It writes ``DIR/front.md`` (a table of kept FLOPs, kept units per group and test accuracy,
mean ± sample std over seeds), ``DIR/front.json`` (every seed's figures) and
``DIR/front.png`` (test accuracy against kept FLOPs). Exit codes: 0 done; 2 a missing or
malformed record, or unpaired runs.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments import cli

# (label, which run of the pair, sub-folder, record file); {tolerance} and {prune} are the
# --tolerance-folder and --prune-folder names.
MODELS = (
  ("PathProx, compacted exactly", "pathprox", "compact", "compact.json"),
  ("PathProx, compacted with the tolerance", "pathprox", "{tolerance}", "compact.json"),
  ("PathProx, compacted exactly + heal", "pathprox", "compact-heal", "heal.json"),
  ("weight decay, pruned to the same units", "wd", "{prune}", "prune.json"),
  ("weight decay, pruned + heal", "wd", "{prune}-heal", "heal.json"),
)


class RecordError(ValueError):
  """A record the front needs is missing or malformed."""


def _read(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise RecordError(f"{path}: {e.__class__.__name__}: {e}") from e


def figures(record: dict) -> dict:
  """One seed's test accuracy, kept FLOPs and kept units per group, from one record.

  A heal record's model is its source's (a compact or prune output), with the healed accuracy.
  """
  if "heal_steps" in record:
    source = figures(_read(Path(record["source"]) / f"{record['kind']}.json"))
    keys = ("test_acc", "val_acc", "chosen_lr", "total_steps")
    return {**source, **{key: record[key] for key in keys}}
  flops = record["flops_per_example"]
  if "match" in record:  # a prune output
    acc, flops_kept = record["test_acc"]["pruned"], flops["ratio"]
  else:
    acc, flops_kept = record["check"]["compact_acc"], flops["compact"] / flops["sparse"]
  units = {g: (len(k), record["original_units"][g]) for g, k in record["kept"].items()}
  return {"test_acc": acc, "flops_kept": flops_kept, "units": units}


def _mean_std(values: Sequence[float], digits: int) -> str:
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def front(
  pathprox: Sequence[Path],
  wd: Sequence[Path],
  tolerance_folder: str | None,
  compacted: Sequence[Sequence[str]] = (),
  prune_folder: str = "prune",
) -> dict:
  """``{model label: [one figures dict per seed]}`` for every model whose records exist, then
  one model per ``compacted`` entry ``[label, run, ...]``."""
  if len(pathprox) != len(wd):
    raise RecordError(f"{len(pathprox)} PathProx runs but {len(wd)} weight-decay runs: pair them")
  rows = {}
  for label, side, sub, kind in MODELS if pathprox else ():
    if sub == "{tolerance}" and tolerance_folder is None:
      continue
    sub = sub.format(tolerance=tolerance_folder, prune=prune_folder)
    runs = pathprox if side == "pathprox" else wd
    rows[label] = [figures(_read(run / sub / kind)) for run in runs]
  for label, *runs in compacted:
    if not runs:
      raise RecordError(f"--compacted {label!r} names no run folder: give LABEL RUN [RUN ...]")
    rows[label] = [figures(_read(Path(run) / "compact" / "compact.json")) for run in runs]
  if not rows:
    raise RecordError("nothing to compare: give --pathprox and --wd runs, or --compacted")
  return rows


def table(rows: dict) -> str:
  """The front as a Markdown table (accuracy in %, mean ± std over seeds)."""
  lines = [
    "| model | seeds | FLOPs kept | units kept per group | test acc (%) |",
    "|---|---|---|---|---|",
  ]
  for label, seeds in rows.items():
    groups = sorted(seeds[0]["units"], key=int)
    units = ", ".join(
      f"{statistics.mean(s['units'][g][0] for s in seeds):.1f}/{seeds[0]['units'][g][1]}"
      for g in groups
    )
    flops = _mean_std([s["flops_kept"] for s in seeds], 3)
    acc = _mean_std([100 * s["test_acc"] for s in seeds], 2)
    lines.append(f"| {label} | {len(seeds)} | {flops} | {units} | {acc} |")
  return "\n".join(lines) + "\n"


def plot(rows: dict, path: Path) -> None:
  """Test accuracy against kept FLOPs, one point (mean ± std over seeds) per model."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for label, seeds in rows.items():
    x = [s["flops_kept"] for s in seeds]
    y = [100 * s["test_acc"] for s in seeds]
    ax.errorbar(
      statistics.mean(x),
      statistics.mean(y),
      xerr=statistics.stdev(x) if len(x) > 1 else 0,
      yerr=statistics.stdev(y) if len(y) > 1 else 0,
      fmt="o" if label.startswith("PathProx") else "s",
      capsize=3,
      label=label,
    )
  ax.set_xlabel("FLOPs kept (compact model / dense model, per example)")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.ArgumentParser(
    prog="python -m experiments.front", description=__doc__.splitlines()[0]
  )
  parser.add_argument(
    "--pathprox", nargs="+", type=Path, default=[], help="PathProx run folders, one per seed"
  )
  parser.add_argument(
    "--wd", nargs="+", type=Path, default=[], help="weight-decay run folders, same seed order"
  )
  parser.add_argument(
    "--compacted",
    nargs="+",
    action="append",
    default=[],
    metavar="LABEL RUN",
    help="a model's label, then its run folders (each compacted: RUN/compact/compact.json)",
  )
  parser.add_argument(
    "--tolerance-folder", help="the compact output with --path-norm-tol, inside each PathProx run"
  )
  parser.add_argument(
    "--prune-folder",
    default="prune",
    help="the prune output inside each weight-decay run (its heal: NAME-heal)",
  )
  parser.add_argument(
    "--out", type=Path, required=True, help="the folder to write front.md, front.json, front.png"
  )
  args = parser.parse_args(argv)
  try:
    rows = front(args.pathprox, args.wd, args.tolerance_folder, args.compacted, args.prune_folder)
  except (RecordError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "front.md").write_text(table(rows))
  (args.out / "front.json").write_text(json.dumps(rows, indent=2) + "\n")
  plot(rows, args.out / "front.png")
  print(table(rows), end="")
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
