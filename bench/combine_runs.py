"""Several simulations' results.csv as one report: one table, one set of savings, one plot.

    python -m bench.combine_runs OUT NAME=RESULTS.csv[:STRATEGY] ...

Each argument takes the rows of one results.csv (only STRATEGY's, if given) under the name
NAME, so runs made with different settings (cold start on and off, offline and through Label
Studio) compare in one table: OUT/results.csv, metrics.md (mean ± 95 % CI over seeds),
savings.md (labels to each baseline's final mean accuracy) and curves.png, as `isal simulate`
writes them for one run (isal_core.simulation.report).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from isal_core.simulation.report import write_report


def read(spec: str) -> list[dict]:
    """NAME=path[:strategy] -> that file's rows (of that strategy), renamed NAME."""
    name, _, source = spec.partition("=")
    if not name or not source:
        raise SystemExit(f"{spec!r}: expected NAME=RESULTS.csv[:STRATEGY]")
    path, _, strategy = source.partition(":")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if not strategy or r["strategy"] == strategy]
    if not rows:
        raise SystemExit(f"{spec!r}: no rows" + (f" of strategy {strategy!r}" if strategy else ""))
    return [{**r, "strategy": name} for r in rows]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", nargs="+", help="NAME=RESULTS.csv[:STRATEGY]")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    rows = [row for spec in args.runs for row in read(spec)]
    args.out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    write_report(args.out, rows, title=args.title)
    print((args.out / "metrics.md").read_text())
    print((args.out / "savings.md").read_text())


if __name__ == "__main__":
    main()
