"""What a simulation's results.csv says: learning curves and label savings.

The paper's headline is a saving: to reach a baseline's final accuracy, ISAL needs N%
fewer labels. We compute it the same way for every pair of strategies: average the
seeds into one curve per strategy, find where the strategy's mean curve first reaches
the baseline's final mean (linear interpolation between the two points around it),
and compare that label count with the baseline's final one.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_text

_TOLERANCE = 1e-9  # means of equal numbers may differ in the last bit


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


def plot_curves(rows: list[dict], path: Path, cost: str = "labels", title: str = "") -> None:
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
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}\nmean over seeds, band = min-max" if title else "mean over seeds, band = min-max")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, rows: list[dict], title: str = "") -> None:
    """curves.png and savings.md next to results.csv (rewritten in full each time)."""
    if not rows:
        return
    plot_curves(rows, out / "curves.png", title=title)
    write_text(out / "savings.md", savings_table(rows))
