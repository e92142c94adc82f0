"""How good is the project page's forecast? Fitted on the first part of measured learning curves, checked on the rest.

    python -m bench.forecast [--runs docs/results/cifar10-pretrained-cpu/combined docs/results/cifar10-cpu ...]

For every (strategy, seed) curve of each run's results.csv, the forecast (isal_core.forecast)
is fitted on the rounds whose labels are at most 25 % and 50 % of the run's final labels,
with the curve's own final metric as the target; the labels it predicts are compared with
the labels the curve actually needed to reach that metric (its first round at or above it).
Reports, per run and fraction, how many curves got a number, the median absolute relative
error, and how often the 80 % band held the true labels. Writes docs/results/bench/forecast.json.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from isal_core.forecast import forecast

from .common import write_result

RUNS = ("docs/results/cifar10-pretrained-cpu/combined", "docs/results/cifar10-cpu",
        "docs/results/cifar10-cpu-2026-11", "docs/results/bccd-cpu")


def curves(run: Path) -> dict[tuple[str, int], list[tuple[int, float]]]:
    out = defaultdict(list)
    with open(run / "results.csv") as f:
        for row in csv.DictReader(f):
            out[(row["strategy"], int(row["seed"]))].append((int(row["labels"]), float(row["metric"])))
    return {k: sorted(v) for k, v in out.items()}


def measure(run: Path, fraction: float) -> dict:
    errors, inside, fitted, total, reasons = [], 0, 0, 0, defaultdict(int)
    for points in curves(run).values():
        labels, metric = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        target = float(metric[-1])
        needed = float(labels[np.argmax(metric >= target)])
        seen = labels <= fraction * labels[-1]
        if seen.any() and needed <= labels[seen].max():
            continue  # reached inside the fitted part: nothing to forecast
        total += 1
        fit = forecast(labels[seen], metric[seen], target)
        if fit.labels is None:
            reasons[fit.reason.split(":")[0]] += 1
            continue
        fitted += 1
        errors.append(abs(fit.labels - needed) / needed)
        inside += (fit.low or 0) <= needed <= (fit.high if fit.high is not None else float("inf"))
    return {"curves": total, "forecast": fitted, "no_number": dict(reasons),
            "median_abs_relative_error": round(float(np.median(errors)), 3) if errors else None,
            "band_held_truth": f"{inside}/{fitted}"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=list(RUNS))
    ap.add_argument("--name", default="forecast", help="docs/results/bench/<name>.json")
    args = ap.parse_args(argv)
    results = {}
    for run in args.runs:
        for fraction in (0.25, 0.5):
            results[f"{run} @ {fraction:.0%}"] = found = measure(Path(run), fraction)
            print(f"{run:<48} fitted on <= {fraction:.0%} of the labels: {found}")
    summary = {"bench": "forecast", "device": "cpu", "results": results}
    print(json.dumps(summary))
    write_result(args.name, "forecast", summary, argv)
    return summary


if __name__ == "__main__":
    main()
