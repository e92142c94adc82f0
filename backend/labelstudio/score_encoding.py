"""The order the backend wants served -> Label Studio prediction scores.

Label Studio serves tasks by prediction score, LOWEST first: "Uncertainty sampling"
(`/api/projects/<id>/next`) orders by `predictions__score` ascending and the Data
Manager's "Prediction score" column sorts ascending. It also silently drops predictions
whose score is outside [0, 1]. A job decides the whole order (the strategy's ranking,
spread over clusters when cluster serving is on: isal_core.selection.serving), so the
score is the task's place in it:

    score(task at place r of n) = (r + 1) / (n + 1)

- the order Label Studio serves, the Data Manager sorted by score and the backend's own
  order are one and the same, diversity included, with no `cluster` field (so every
  prediction goes through the bulk import);
- in (0, 1): always kept by Label Studio; distinct for every task;
- the raw influence stays in the version's files (scores.npz), /predict and /status.
A task imported after the job is scored by /predict with the version's own model and
s_test, and gets the score of the job's pool task whose influence is nearest its own
(`score_like`): it is served next to the tasks it resembles most by influence.
"""
from __future__ import annotations

import numpy as np

#: Score before any model exists, and for tasks that cannot be scored, halfway.
UNTRAINED_SCORE = 0.5
#: Score for a task the model cannot see (no image, download failed): served last.
UNSCORABLE_SCORE = 1.0


def place_scores(order, n: int) -> np.ndarray:
    """Scores for pool positions served in `order` (positions, first served first): (place + 1) / (n + 1)."""
    scores = np.full(n, UNSCORABLE_SCORE, dtype=np.float64)
    scores[np.asarray(order, dtype=np.int64)] = (np.arange(len(order)) + 1.0) / (n + 1.0)
    return scores


def first_served(scores, limit: int) -> np.ndarray:
    """Positions of the `limit` lowest scores (the first Label Studio serves; 0 = every one), in that order.

    Why not every task: Label Studio 1.23 deletes a version's predictions in one transaction with a
    counter update per prediction, during which SQLite (its default database) takes no other write, so
    an annotation submitted then waits for the whole deletion (`python -m bench.ls_lock`: 5.1 s for 500
    predictions, 57.6 s for 5,000, when the annotation timed out). A version of the first 500 tasks keeps
    that pause short, and the job's write with it; the Data Manager sorts tasks without a prediction of
    the served version last, and `/predict` scores any task on demand."""
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    return order[:limit] if limit > 0 else order


def score_like(influences, pool_influences, pool_scores) -> np.ndarray:
    """For new tasks: the score of the pool task with the nearest influence (0.5 when the pool had none)."""
    known = np.isfinite(np.asarray(pool_influences, dtype=np.float64))
    values = np.asarray(pool_influences, dtype=np.float64)[known]
    scores = np.asarray(pool_scores, dtype=np.float64)[known]
    out = np.full(len(influences), UNTRAINED_SCORE, dtype=np.float64)
    if not len(values):
        return out
    by = np.argsort(values, kind="stable")
    values, scores = values[by], scores[by]
    for i, value in enumerate(np.asarray(influences, dtype=np.float64)):
        if not np.isfinite(value):
            continue
        j = int(np.clip(np.searchsorted(values, value), 1, len(values) - 1)) if len(values) > 1 else 0
        nearest = j if len(values) == 1 or abs(values[j] - value) < abs(values[j - 1] - value) else j - 1
        out[i] = scores[nearest]
    return out
