"""Influence -> Label Studio prediction score.

Label Studio serves tasks by prediction score, LOWEST first: "Uncertainty sampling"
(`/api/projects/<id>/next`) orders by `predictions__score` ascending and the Data
Manager's "Prediction score" column sorts ascending. It also silently drops predictions
whose score is outside [0, 1]. ISAL labels the MOST NEGATIVE influence first
(I(z) = -grad l(R)^T (H + damping I)^-1 G_z < 0 means labeling z lowers the reference
loss). So the score is a strictly increasing squashing of the influence:

    score(z) = sigmoid(I(z) / sigma),   sigma = std of the pool's influences in that job

- strictly monotone: ascending score = ascending influence = ISAL's order, exactly;
- in (0, 1): always kept by Label Studio; 0.5 means zero influence;
- sigma only sets the scale (about 0.27..0.73 for +-1 std). It is fixed per model
  version and saved in its meta.json, so a task scored later by /predict (one that
  arrived after the job) lands on the same scale as the pool scored by the job.
- float64 keeps the helpful end distinct: sigmoid(-30) is 9e-14, not 0. Only very
  harmful tasks (I > ~37 sigma) can round to exactly 1.0 and tie there.
"""
from __future__ import annotations

import math

import numpy as np

#: Score before any model exists, and for tasks that cannot be scored, halfway.
UNTRAINED_SCORE = 0.5
#: Score for a task the model cannot see (no image, download failed): served last.
UNSCORABLE_SCORE = 1.0


def influence_scale(influences) -> float:
    """sigma for `encode`: the std of the job's pool influences (1.0 when it is 0 or undefined)."""
    values = np.asarray(influences, dtype=np.float64)
    values = values[np.isfinite(values)]
    sigma = float(values.std()) if values.size > 1 else 0.0
    if not math.isfinite(sigma) or sigma <= 0:
        sigma = float(np.abs(values).max()) if values.size else 0.0
    return sigma if math.isfinite(sigma) and sigma > 0 else 1.0


def encode(influences, sigma: float) -> np.ndarray:
    """sigmoid(I / sigma) in float64, computed without overflow for large |I / sigma|."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    z = np.asarray(influences, dtype=np.float64) / sigma
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def ranking_scores(influences, ranking, sigma: float) -> np.ndarray:
    """Scores that make Label Studio serve the job's ranking: encode(I) for scored tasks; tasks the
    ranking puts after them (unscored: a detection image with no pseudo-box) get scores above every
    scored one, in the ranking's (seeded random) order, so they are served only when the scored run out."""
    scores = encode(influences, sigma)
    order = np.asarray(ranking.order.tolist(), dtype=np.int64)
    unscored = order[~np.isfinite(np.asarray(ranking.scores.double().numpy()))[order]]
    if unscored.size:
        scored = np.setdiff1d(np.arange(len(scores)), unscored)
        floor = float(scores[scored].max()) if scored.size else 0.5
        scores[unscored] = floor + (1.0 - floor) * np.arange(1, unscored.size + 1) / (unscored.size + 1)
    return scores
