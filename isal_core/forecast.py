"""How many more labels a target metric takes: a power-law learning curve fitted to the versions so far.

Learning curves of supervised models follow a power law in the number of labels over a wide
range (Hestness et al., 2017): the error 1 - metric falls as a * n^-b. In log-log space that
is a straight line, log(1 - m) = alpha - b log n, fitted by least squares to every version's
(labels, metric on R). The labels the target takes solve the line for it; the band is where
the line's 80 % prediction interval (Student's t, n - 2 degrees of freedom) crosses the
target, so a noisy or short curve says so with a wide band. The fit needs at least
MIN_POINTS versions with different label counts; with fewer, with a curve that does not
improve, or with a target the line reaches only beyond REACH times the labels so far (a
number that far out is the fit's noise, not a forecast), it says why instead of giving one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_POINTS = 3
LEVEL = 0.8  # of the prediction interval that makes the band
REACH = 1000.0  # farthest extrapolation given as a number: this many times the labels so far


@dataclass
class Forecast:
    """`labels`: the total labels at which the fitted curve reaches the target (None: no number, see `reason`);
    `low`/`high`: the band (None where the interval never reaches the target); `more`: labels still needed."""

    target: float
    points: int
    labels: float | None = None
    low: float | None = None
    high: float | None = None
    exponent: float | None = None  # b in error = a * n^-b
    reached: bool = False
    reason: str = ""

    def more(self, labeled: int) -> float | None:
        return None if self.labels is None else max(0.0, self.labels - labeled)

    def curve(self, n) -> np.ndarray:
        """The fitted metric at label counts `n` (for plotting)."""
        return 1.0 - np.exp(self._alpha - self.exponent * np.log(np.asarray(n, dtype=float)))

    _alpha: float = 0.0


def forecast(labels, metrics, target: float) -> Forecast:
    """Labels to reach `target` (a metric in (0, 1), higher is better) from (labels, metric) points."""
    n, m = np.asarray(labels, dtype=float), np.asarray(metrics, dtype=float)
    keep = np.isfinite(n) & np.isfinite(m) & (n > 0)
    n, m = n[keep], m[keep]
    out = Forecast(target=target, points=len(np.unique(n)))
    if not 0 < target < 1:
        out.reason = f"the target {target:g} is not a metric in (0, 1)"
        return out
    if len(m) and m.max() >= target:
        out.reached, out.reason = True, f"reached: {m.max():.3f} >= {target:g} at {int(n[m.argmax()])} labels"
        out.labels = out.low = out.high = float(n[m >= target].min())
        return out
    if out.points < MIN_POINTS:
        out.reason = f"not enough versions yet: {out.points} label counts, a forecast needs {MIN_POINTS}"
        return out
    x, y = np.log(n), np.log(np.clip(1.0 - m, 1e-9, None))
    slope, alpha = np.polyfit(x, y, 1)
    if slope >= 0:
        out.reason = "not improving: the metric does not rise with the labels so far"
        return out
    out.exponent, out._alpha = float(-slope), float(alpha)
    y_target = math.log(1.0 - target)
    labels = float(math.exp((y_target - alpha) / slope))
    if labels > REACH * n.max():
        out.reason = (f"out of reach of this curve: at its rate so far the target takes more than {REACH:,.0f} "
                      f"times the {int(n.max()):,} labels of the largest version")
        return out
    out.labels = labels
    out.low, out.high = _band(x, y, slope, alpha, y_target)
    return out


def _band(x, y, slope, alpha, y_target) -> tuple[float | None, float | None]:
    """Label counts where the prediction interval of log error crosses the target (searched on a log grid)."""
    from scipy.stats import t as student

    k = len(x)
    residual = y - (alpha + slope * x)
    s = math.sqrt(float(residual @ residual) / (k - 2)) if k > 2 else 0.0
    q = float(student.ppf(0.5 + LEVEL / 2, k - 2)) if k > 2 else 0.0
    grid = np.linspace(x.min(), x.max() + math.log(1000.0), 4000)
    spread = q * s * np.sqrt(1 + 1 / k + (grid - x.mean()) ** 2 / float(((x - x.mean()) ** 2).sum()))
    centre = alpha + slope * grid
    low = grid[centre - spread <= y_target]  # optimistic edge: reaches the target first
    high = grid[centre + spread <= y_target]  # pessimistic edge
    return (float(math.exp(low[0])) if len(low) else None, float(math.exp(high[0])) if len(high) else None)
