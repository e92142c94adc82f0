"""Box budgets for the detection simulation: a user pays per box, not per image.

Before labeling, an image's cost is the boxes the model predicts on it (at least 1: the
annotator looks at every image); once labeled, its true boxes. The random initial set is
cut by true boxes (no model exists yet), each round's picks by predicted boxes, and the
results report the labeled set's true boxes, so curves and savings are in boxes.
`per_box` ranks by influence per predicted box: cost-normalized selection.
"""
from __future__ import annotations

import torch

from ..influence.scorer import PoolScores
from ..selection.base import influence_ranking


def true_boxes(records) -> int:
    return sum(len(r.label["boxes"]) for r in records)


def prefix_by_cost(order: list[int], costs: list[int], budget: int) -> list[int]:
    """The shortest head of `order` whose costs reach `budget` (all of it if they never do)."""
    taken, spent = [], 0
    for i, cost in zip(order, costs):
        if spent >= budget:
            break
        taken.append(i)
        spent += max(1, int(cost))
    return taken


def per_box_ranking(scores: PoolScores, adapter, seed: int):
    """Influence divided by predicted boxes (at least 1), ranked as influence is (unscored last)."""
    costs = torch.tensor([max(1, adapter.cost(p)) for p in scores.predictions], dtype=scores.influence.dtype)
    return influence_ranking(PoolScores(scores.influence / costs, scores.predictions), adapter, seed)
