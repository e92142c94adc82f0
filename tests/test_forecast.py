"""The labels-to-target forecast against a learning curve whose answer is known."""
from __future__ import annotations

import numpy as np

from isal_core.forecast import MIN_POINTS, forecast

# metric = 1 - 2 n^-0.5: 0.95 is reached at exactly n = (2 / 0.05)^2 = 1,600 labels
TRUE_LABELS = 1600.0


def noisy_curve(seed: int, noise: float = 0.03, counts=(100, 150, 200, 300, 400, 500)):
    rng = np.random.default_rng(seed)
    n = np.asarray(counts, dtype=float)
    error = 2 * n ** -0.5 * np.exp(rng.normal(0, noise, len(n)))  # multiplicative noise on the error
    return n, 1 - error


def test_an_exact_power_law_is_recovered_exactly():
    n, m = noisy_curve(0, noise=0.0)
    f = forecast(n, m, 0.95)
    assert abs(f.labels - TRUE_LABELS) < 1e-6 and abs(f.exponent - 0.5) < 1e-9
    assert f.low == f.high or abs(f.low - f.high) / TRUE_LABELS < 0.01  # no noise: no band to speak of
    assert abs(f.more(500) - (TRUE_LABELS - 500)) < 1e-6


def test_the_band_holds_the_true_labels_on_most_noisy_curves_and_the_estimate_is_close():
    inside, errors = 0, []
    for seed in range(20):
        f = forecast(*noisy_curve(seed), 0.95)
        assert f.labels is not None and f.low is not None and f.low <= f.labels
        inside += f.low <= TRUE_LABELS <= (f.high if f.high is not None else float("inf"))
        errors.append(abs(f.labels - TRUE_LABELS) / TRUE_LABELS)
    assert inside >= 14, inside  # an 80 % interval: about 16 of 20
    assert np.median(errors) < 0.15, errors


def test_too_few_versions_give_a_reason_not_a_number():
    n, m = noisy_curve(1, counts=(100, 200))
    f = forecast(n, m, 0.95)
    assert f.labels is None and f.reason.startswith("not enough versions yet") and str(MIN_POINTS) in f.reason
    assert forecast([], [], 0.95).labels is None


def test_a_reached_target_and_a_flat_curve_say_so():
    f = forecast([10, 20, 30, 40], [0.5, 0.7, 0.96, 0.97], 0.95)
    assert f.reached and f.labels == 30 and f.more(40) == 0
    flat = forecast([10, 20, 30, 40], [0.6, 0.6, 0.59, 0.58], 0.95)
    assert flat.labels is None and "not improving" in flat.reason
    assert "not a metric" in forecast([10, 20, 30, 40], [0.1, 0.2, 0.3, 0.4], 1.5).reason


def test_a_target_far_beyond_the_curve_gives_a_reason_not_a_number():
    # metric = 1 - 2 n^-0.05 (a curve that barely rises): 0.95 would take (2 / 0.05)^20 labels
    n = np.asarray([100, 200, 400, 800], dtype=float)
    f = forecast(n, 1 - 2 * n ** -0.05, 0.95)
    assert f.labels is None and "out of reach" in f.reason, f
    # the same shape within reach is a number: 1 - 2 n^-0.5 reaches 0.95 at 1,600 labels, 2x the largest
    assert abs(forecast(n, 1 - 2 * n ** -0.5, 0.95).labels - TRUE_LABELS) < 1e-6
