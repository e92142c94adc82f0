"""BADGE and batch-aware ISAL: the picks they promise, on a small convex model."""
from __future__ import annotations

import torch
from torch import nn

from isal_core.data.images import TensorDataset3
from isal_core.influence.stest import CG
from isal_core.selection import BADGE, ISAL, BatchISAL, SelectionContext
from isal_core.selection.diversity import _features_and_residuals
from isal_core.tasks.classification import ClassificationAdapter


def context(budget=6):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    pool = TensorDataset3(torch.randn(40, 5, generator=g), torch.full((40,), -1))
    labeled = TensorDataset3(torch.randn(10, 5, generator=g), torch.randint(0, 3, (10,), generator=g))
    reference = TensorDataset3(torch.randn(10, 5, generator=g), torch.randint(0, 3, (10,), generator=g))
    return SelectionContext(model, ClassificationAdapter(), pool, labeled, reference, batch_size=16, budget=budget)


def test_badge_seeds_kmeans_plus_plus_on_gradient_embeddings():
    ctx = context()
    h, r = _features_and_residuals(ctx, ctx.pool)
    grads = torch.einsum("nc,nd->ncd", r, h).flatten(1)  # the explicit gradient embeddings
    ranking = BADGE(seed=1).rank(ctx)
    first = ranking.order[:6].tolist()
    assert first[0] == int(grads.norm(dim=1).argmax()) and len(set(first)) == 6
    assert sorted(ranking.order.tolist()) == list(range(40))
    assert torch.equal(BADGE(seed=1).rank(ctx).order, ranking.order)  # seeded


def test_batch_isal_picks_a_spread_out_batch_among_the_top_influence_candidates():
    ctx = context()
    isal = ISAL(solver=CG(damping=1.0), params="all")
    influence = isal.scores(ctx)
    candidates = set(torch.argsort(influence, stable=True)[:12].tolist())
    batch = BatchISAL(isal, factor=2).rank(ctx).order[:6].tolist()
    assert set(batch) <= candidates and len(set(batch)) == 6
    assert batch != torch.argsort(influence, stable=True)[:6].tolist()  # spread, not just the top 6


def _points_context(budget=2):
    """Pool points in the plane as the features (the last layer's input), one labeled point at (-1, 0)."""
    pool = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [0.0, 5.0], [10.0, 10.0], [0.2, 0.0]])
    model = nn.Sequential(nn.Identity(), nn.Linear(2, 3)).double()
    return SelectionContext(model, ClassificationAdapter(), TensorDataset3(pool.double(), torch.full((6,), -1)),
                            TensorDataset3(torch.tensor([[-1.0, 0.0]]).double(), torch.tensor([0])), batch_size=4,
                            budget=budget)


def test_batch_isal_spread_is_the_hand_worked_k_center_answer():
    from isal_core.selection import Ranking

    ctx = _points_context()
    influence = Ranking.ascending(torch.tensor([-6.0, -5.0, -3.0, -2.0, -1.0, -4.0], dtype=torch.float64))
    # candidates (factor 2 x budget 2): points 0, 1, 5, 2 at distances 1, 1.1, 1.2, 6 from the labeled point:
    # k-center takes 2 (farthest), then 5 (still 1.2 away: 2 is farther from each); the rest in influence order
    assert BatchISAL(ISAL(), factor=2).rank_by(ctx, influence).order.tolist() == [2, 5, 0, 1, 3, 4]


def test_batch_isal_never_picks_an_unscored_sample_before_the_scored_ones():
    from isal_core.selection import Ranking

    ctx = _points_context()
    scores = torch.tensor([-5.0, -4.0, float("inf"), -2.0, -1.0, -3.0], dtype=torch.float64)  # 2: no pseudo-box
    influence = Ranking(torch.tensor([0, 1, 5, 3, 4, 2]), scores)
    # candidates 0, 1, 5, 3 (2 is unscored, though the farthest): k-center takes 3 (5.1 away), then 5
    assert BatchISAL(ISAL(), factor=2).rank_by(ctx, influence).order.tolist() == [3, 5, 0, 1, 4, 2]
