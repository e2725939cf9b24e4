"""The accuracy–FLOPs front of PathProx against weight decay + magnitude pruning, over seeds.

``python -m experiments.front --pathprox PP_RUN ... --wd WD_RUN ... [--pair PP WD ...] --out DIR``
reads, for each seed's pair of runs (the i-th ``--pathprox`` with the i-th ``--wd``), the
outputs that :mod:`experiments.compact`, :mod:`experiments.prune` and :mod:`experiments.heal`
wrote next to them. Each ``--pair PP [WD]`` (repeatable; default ``compact prune``) names one
PathProx compaction and, optionally, the weight-decay run's pruning to its units:

- ``PP_RUN/PP/compact.json``: PathProx compacted (exactly, or with ``--path-norm-tol``: the
  record says which, and so does the model's label);
- ``WD_RUN/WD/prune.json``: the weight-decay run pruned by ‖w_i‖‖v_i‖ to the same units;
- ``PP_RUN/PP-heal/heal.json`` and ``WD_RUN/WD-heal/heal.json``: both healed by the same
  command. A pair's heals are read when they exist; one without the other is an error (the
  front compares methods healed alike or not at all).

``--compacted LABEL RUN ...`` (repeatable) adds one model per label from its runs'
``RUN/compact/compact.json`` alone, e.g. budget runs, whose switched-off units compact exactly;
without ``--pathprox`` and ``--wd``, the front is those models only.

It writes ``DIR/front.md`` (a table of kept FLOPs, kept units per group and test accuracy,
mean ± sample std over seeds), ``DIR/front.json`` (every seed's figures) and
``DIR/front.png`` (test accuracy against kept FLOPs). Exit codes: 0 done; 2 a missing or
malformed record, or unpaired runs.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments import cli

DEFAULT_PAIRS = (("compact", "prune"),)


class RecordError(ValueError):
  """A record the front needs is missing or malformed."""


def _read(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise RecordError(f"{path}: {e.__class__.__name__}: {e}") from e


def healed_figures(heal_folder: Path) -> dict:
  """A heal's figures: its source's model (the compact or prune output beside it, whatever
  folder the record names: committed records moved), with the healed accuracy."""
  record = _read(heal_folder / "heal.json")
  source = heal_folder.with_name(heal_folder.name.removesuffix("-heal"))
  keys = ("test_acc", "val_acc", "chosen_lr", "total_steps")
  return {**figures(_read(source / f"{record['kind']}.json")), **{key: record[key] for key in keys}}


def figures(record: dict) -> dict:
  """One seed's test accuracy, kept FLOPs and kept units per group, from a compact or prune
  record."""
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


def _pair_rows(
  pathprox: Sequence[Path], wd: Sequence[Path], pp_sub: str, wd_sub: str | None
) -> dict:
  """One ``--pair``'s models: the compaction, the matched pruning, and their heals."""
  compacted = [_read(run / pp_sub / "compact.json") for run in pathprox]
  tol = compacted[0].get("path_norm_tol", 0.0)
  models = [
    ("PathProx, compacted " + (f"at path-norm tolerance {tol:g}" if tol else "exactly"),
     [figures(record) for record in compacted], [run / f"{pp_sub}-heal" for run in pathprox]),
  ]  # fmt: skip
  if wd_sub is not None:
    models.append((
      "weight decay, pruned to the same units" + (f" (tolerance {tol:g})" if tol else ""),
      [figures(_read(run / wd_sub / "prune.json")) for run in wd],
      [run / f"{wd_sub}-heal" for run in wd],
    ))  # fmt: skip
  heals = [folder / "heal.json" for _, _, folders in models for folder in folders]
  missing = [path for path in heals if not path.is_file()]
  if missing and len(missing) < len(heals):
    raise RecordError(f"{missing[0]} is missing: heal the pair's models alike, or neither")
  rows = {label: seeds for label, seeds, _ in models}
  if not missing:
    for label, _, folders in models:
      rows[f"{label} + heal"] = [healed_figures(folder) for folder in folders]
  return rows


def front(
  pathprox: Sequence[Path],
  wd: Sequence[Path],
  pairs: Sequence[Sequence[str]] = DEFAULT_PAIRS,
  compacted: Sequence[Sequence[str]] = (),
) -> dict:
  """``{model label: [one figures dict per seed]}``: each pair's models, then one model per
  ``compacted`` entry ``[label, run, ...]``."""
  if len(pathprox) != len(wd):
    raise RecordError(f"{len(pathprox)} PathProx runs but {len(wd)} weight-decay runs: pair them")
  rows = {}
  for pp_sub, *wd_sub in pairs if pathprox else ():
    if len(wd_sub) > 1:
      raise RecordError(f"--pair {pp_sub} {' '.join(wd_sub)}: give one or two folders")
    rows.update(_pair_rows(pathprox, wd, pp_sub, wd_sub[0] if wd_sub else None))
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
  colors = plt.get_cmap("tab20").colors  # no two of up to 20 models alike
  for (label, seeds), color in zip(rows.items(), itertools.cycle(colors)):
    x = [s["flops_kept"] for s in seeds]
    y = [100 * s["test_acc"] for s in seeds]
    ax.errorbar(
      statistics.mean(x),
      statistics.mean(y),
      xerr=statistics.stdev(x) if len(x) > 1 else 0,
      yerr=statistics.stdev(y) if len(y) > 1 else 0,
      fmt="o" if label.startswith("PathProx") else "s",
      capsize=3,
      color=color,
      label=label,
    )
  ax.set_xlabel("FLOPs kept (compact model / dense model, per example)")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the points
  fig.savefig(path, dpi=120, bbox_inches="tight")
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
    "--pair",
    nargs="+",
    action="append",
    metavar="PP [WD]",
    help="a compact output inside each PathProx run, then (optional) the prune output to its "
    "units inside each weight-decay run; repeatable (default: compact prune)",
  )
  parser.add_argument(
    "--out", type=Path, required=True, help="the folder to write front.md, front.json, front.png"
  )
  args = parser.parse_args(argv)
  try:
    rows = front(args.pathprox, args.wd, args.pair or DEFAULT_PAIRS, args.compacted)
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
