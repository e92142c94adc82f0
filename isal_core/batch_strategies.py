"""Batch-aware selection for offline rounds: BADGE, and ISAL whose batch is spread out.

Influence ranks each sample alone, so a round's top `budget` can crowd one region (the
picks of a plain ISAL round are class-imbalanced). `BatchISAL` takes the top `factor x
budget` influence candidates and picks the batch among them by k-center greedy on the
features, nearest labeled sample first. `BADGE` (Ash et al., 2020) is the standard
baseline: k-means++ seeding on the gradient embeddings of the last layer's weights
against the pseudo-label, g_i = (p_i - e_yhat) (x) h_i, whose inner products factor as
<a_i, a_j> <h_i, h_j>, so no N x (C x D) matrix is formed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import evaluation
from .strategies import ISAL, Coreset, Ranking, SelectionContext, Strategy


def _features_and_residuals(ctx: SelectionContext, dataset) -> tuple[Tensor, Tensor]:
    """(penultimate features h [N, D], p - onehot(argmax p) [N, C]) over a dataset."""
    hs, rs = [], []
    for inputs, _, _ in evaluation.batches(ctx.model, ctx.adapter, ctx.loader(dataset), ctx.device):
        p = ctx.adapter.probabilities(ctx.adapter.forward(ctx.model, inputs)).double().cpu()
        hs.append(ctx.adapter.embed(ctx.model, inputs).double().cpu())
        rs.append(p - torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).double())
    return torch.cat(hs), torch.cat(rs)


def _then_the_rest(picked: list[int], rest_key: Tensor) -> Ranking:
    """`picked` first, then every other position by ascending `rest_key`."""
    n = len(rest_key)
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[picked] = True
    rest = torch.nonzero(~chosen).flatten()
    rest = rest[torch.argsort(rest_key[rest], stable=True)]
    order = torch.cat([torch.tensor(picked, dtype=torch.long), rest])
    scores = torch.empty(n)
    scores[order] = torch.arange(n, dtype=torch.float32)
    return Ranking(order, scores)


@dataclass
class BADGE(Strategy):
    """k-means++ seeding on gradient embeddings (first centre: the largest gradient), seeded."""

    seed: int = 0
    name = "badge"

    def _rank(self, ctx):
        h, r = _features_and_residuals(ctx, ctx.pool)
        sq = (h * h).sum(1) * (r * r).sum(1)  # ||g_i||^2
        budget = len(h) if ctx.budget is None else min(ctx.budget, len(h))
        g = torch.Generator().manual_seed(self.seed)
        picked = [int(sq.argmax())]
        dist = torch.full((len(h),), float("inf"), dtype=torch.float64)
        for _ in range(1, budget):
            j = picked[-1]
            dist = torch.minimum(dist, (sq + sq[j] - 2 * (r @ r[j]) * (h @ h[j])).clamp_min(0))
            dist[picked] = 0
            if dist.sum() <= 0:
                break
            picked.append(int(torch.multinomial(dist / dist.sum(), 1, generator=g)))
        return _then_the_rest(picked, -sq)


@dataclass
class BatchISAL(Strategy):
    """The top `factor x budget` by influence, then k-center greedy among them on the features."""

    isal: ISAL = field(default_factory=ISAL)
    factor: int = 5
    name = "isal_batch"

    def _rank(self, ctx):
        influence = self.isal.scores(ctx).double().cpu()
        budget = len(influence) if ctx.budget is None else min(ctx.budget, len(influence))
        candidates = torch.argsort(influence, stable=True)[: self.factor * budget]
        coreset = Coreset()
        pool = coreset._embed(ctx, torch.utils.data.Subset(ctx.pool, candidates.tolist())).double()
        min_dist = torch.full((len(pool),), float("inf"), dtype=torch.float64)
        if ctx.labeled is not None and len(ctx.labeled) > 0:
            labeled = coreset._embed(ctx, ctx.labeled).double()
            min_dist = torch.cdist(pool, labeled).min(1).values
        picked: list[int] = []
        for _ in range(budget):
            k = int(torch.argmax(min_dist))  # no labeled set yet: the first (best) candidate
            picked.append(int(candidates[k]))
            min_dist = torch.minimum(min_dist, torch.cdist(pool, pool[k:k + 1]).squeeze(1))
            min_dist[k] = -1.0
        return _then_the_rest(picked, influence)
