"""BADGE and batch-aware ISAL: the picks they promise, on a small convex model."""
from __future__ import annotations

import torch
from torch import nn

from isal_core.tasks.classification import ClassificationAdapter
from isal_core.selection import BADGE, BatchISAL
from isal_core.selection.diversity import _features_and_residuals
from isal_core.data.images import TensorDataset3
from isal_core.influence.stest import CG
from isal_core.selection import ISAL, SelectionContext


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
