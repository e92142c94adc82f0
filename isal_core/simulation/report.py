"""What a simulation's results.csv says: learning curves and label savings.

The paper's headline is a saving: to reach a baseline's final accuracy, ISAL needs N%
fewer labels. We compute it the same way for every pair of strategies: average the
seeds into one curve per strategy, find where the strategy's mean curve first reaches
the baseline's final mean (linear interpolation between the two points around it),
and compare that label count with the baseline's final one.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..utils.atomic import write_text

_TOLERANCE = 1e-9  # means of equal numbers may differ in the last bit
#: Student's t, two-sided 95 %, by degrees of freedom (n - 1 seeds); 1.96 beyond the table
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}


@dataclass(frozen=True)
class CurvePoint:
    cost: float  # labels (or boxes)
    mean: float
    low: float
    high: float
    seeds: int


@dataclass(frozen=True)
class Saving:
    baseline: str
    baseline_cost: float  # the baseline's final label count
    target: float  # the baseline's final mean metric
    strategy: str
    cost: float | None  # labels the strategy needs; None = not reached

    @property
    def percent(self) -> float | None:
        return None if self.cost is None else 100.0 * (self.baseline_cost - self.cost) / self.baseline_cost


def mean_curves(rows: list[dict], cost: str = "labels") -> dict[str, list[CurvePoint]]:
    """Per strategy: mean, min and max of the metric over seeds at each label count."""
    grouped: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[row["strategy"]][float(row[cost])].append(float(row["metric"]))
    return {
        name: [CurvePoint(x, sum(v) / len(v), min(v), max(v), len(v)) for x, v in sorted(points.items())]
        for name, points in sorted(grouped.items())
    }


def cost_to_reach(curve: list[CurvePoint], target: float) -> float | None:
    """Labels where the mean curve first reaches `target`, interpolated linearly; None if never."""
    for i, point in enumerate(curve):
        if point.mean >= target - _TOLERANCE:
            if i == 0 or point.mean <= target:
                return point.cost
            prev = curve[i - 1]
            return prev.cost + (target - prev.mean) / (point.mean - prev.mean) * (point.cost - prev.cost)
    return None


def savings(rows: list[dict], cost: str = "labels") -> list[Saving]:
    """Every (baseline, strategy) pair of distinct strategies found in `rows`."""
    curves = mean_curves(rows, cost)
    out = []
    for baseline, base_curve in curves.items():
        final = base_curve[-1]
        for strategy, curve in curves.items():
            if strategy != baseline:
                out.append(Saving(baseline, final.cost, final.mean, strategy, cost_to_reach(curve, final.mean)))
    return out


def savings_table(rows: list[dict], cost: str = "labels") -> str:
    """Markdown: for each baseline and strategy, the labels needed to reach the baseline's
    final mean metric and the saving in % of the baseline's final label count."""
    lines = [
        "# Label savings\n",
        f"Labels a strategy needs to reach each baseline's final mean metric (mean over seeds, "
        f"linear interpolation between rounds), and the saving in % of the baseline's final {cost}.\n",
        f"| baseline | final {cost} | final metric | strategy | {cost} to reach | saving |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for s in savings(rows, cost):
        reach = "not reached" if s.cost is None else f"{s.cost:.0f}"
        saving = "not reached" if s.percent is None else f"{s.percent:.1f}%"
        lines.append(f"| {s.baseline} | {s.baseline_cost:.0f} | {s.target:.4f} | {s.strategy} | {reach} | {saving} |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], path: Path, cost: str = "labels", title: str = "",
                metric: str = "test accuracy") -> None:
    """Mean metric per strategy against labels, with the min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in mean_curves(rows, cost).items():
        x = [p.cost for p in curve]
        seeds = max(p.seeds for p in curve)
        line, = ax.plot(x, [100 * p.mean for p in curve], marker="o", ms=3, label=f"{name} ({seeds} seeds)")
        ax.fill_between(x, [100 * p.low for p in curve], [100 * p.high for p in curve], color=line.get_color(),
                        alpha=0.15)
    ax.set_xlabel(f"number of {cost}")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{title}\nmean over seeds, band = min-max" if title else "mean over seeds, band = min-max")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def interval95(values: list[float]) -> float:
    """Half-width of the 95 % confidence interval of the mean (Student's t; 0 for one value)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T95.get(n - 1) or next((t for df, t in sorted(_T95.items()) if df >= n - 1), 1.96)
    return t * sd / math.sqrt(n)


def label_balance(picks: list[list[int]], num_classes: int) -> float:
    """Mean over selection rounds of the label entropy of a round's picks, as a fraction of the
    maximum log(num_classes): 1 = every class equally often."""
    values = []
    for labels in picks:
        if labels:
            counts = Counter(labels).values()
            values.append(-sum(c / len(labels) * math.log(c / len(labels)) for c in counts) / math.log(num_classes))
    return sum(values) / len(values) if values else float("nan")


def metric_table(rows: list[dict], cost: str = "labels", balance: dict[str, float] | None = None) -> str:
    """Markdown: the mean metric (%) per strategy and round, +- the 95 % confidence interval over
    seeds, and with `balance` the label balance of each strategy's picks."""
    grouped: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[row["strategy"]][float(row[cost])].append(100 * float(row["metric"]))
    xs = sorted({x for points in grouped.values() for x in points})
    head = f"| {cost} | " + " | ".join(f"{x:.0f}" for x in xs) + " |" + (" label balance |" if balance else "")
    lines = ["# Metric per round\n", "Mean over seeds (%), +- the 95 % confidence interval of the mean (Student's t); "
             "(n) where fewer seeds than the most. Label balance: the label entropy of a round's picks / log(classes), "
             "mean over rounds and seeds.\n", head, "|---|" + "---:|" * (len(xs) + bool(balance))]
    most = max(len(v) for points in grouped.values() for v in points.values())
    for name, points in sorted(grouped.items()):
        cells = []
        for x in xs:
            v = points.get(x, [])
            cells.append("" if not v else f"{sum(v) / len(v):.1f} ± {interval95(v):.1f}" +
                         ("" if len(v) == most else f" ({len(v)})"))
        extra = f" {balance[name]:.3f} |" if balance and name in balance else (" |" if balance else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |" + extra)
    return "\n".join(lines) + "\n"


def write_report(out: Path, rows: list[dict], title: str = "", balance: dict[str, float] | None = None,
                 metric: str = "test accuracy") -> None:
    """curves.png, savings.md and metrics.md next to results.csv (rewritten in full each time); with
    a boxes column (detection) also curves-boxes.png and savings-boxes.md, against boxes."""
    if not rows:
        return
    plot_curves(rows, out / "curves.png", title=title, metric=metric)
    write_text(out / "savings.md", savings_table(rows))
    write_text(out / "metrics.md", metric_table(rows, balance=balance))
    if all(str(r.get("boxes", "")).strip() for r in rows):
        plot_curves(rows, out / "curves-boxes.png", cost="boxes", title=title, metric=metric)
        write_text(out / "savings-boxes.md", savings_table(rows, "boxes"))
