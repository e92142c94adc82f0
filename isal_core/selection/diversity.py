"""Diversity: k-center greedy on features (coreset, Sener & Savarese 2018) and BADGE (Ash et al., 2020).

BADGE is k-means++ seeding on the gradient embeddings of the last layer's weights against
the pseudo-label, g_i = (p_i - e_yhat) (x) h_i, whose inner products factor as
<a_i, a_j> <h_i, h_j>, so no N x (C x D) matrix is formed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..train import evaluation
from .base import Ranking, SelectionContext, Strategy, features, then_the_rest


@dataclass
class Coreset(Strategy):
    """k-center greedy (Sener & Savarese) on penultimate features.

    Distances are computed chunk by chunk: memory O(N x chunk), never N x N. The first
    `ctx.budget` picks are greedy; the rest of the pool follows by distance to the
    chosen centres, farthest first.
    """

    chunk: int = 1024
    name = "coreset"

    def _rank(self, ctx):
        pool = features(ctx, ctx.pool)
        min_dist = torch.full((len(pool),), float("inf"))
        if ctx.labeled is not None and len(ctx.labeled) > 0:
            for centres in features(ctx, ctx.labeled).split(self.chunk):
                min_dist = torch.minimum(min_dist, self._nearest(pool, centres))
        budget = len(pool) if ctx.budget is None else min(ctx.budget, len(pool))
        picked = []
        chosen = torch.zeros(len(pool), dtype=torch.bool)
        for _ in range(budget):
            i = int(torch.argmax(torch.where(chosen, -1.0, min_dist)))
            if not torch.isfinite(min_dist[i]):
                i = int(torch.nonzero(~chosen)[0])  # no labeled set: start anywhere
            picked.append(i)
            chosen[i] = True
            min_dist = torch.minimum(min_dist, self._nearest(pool, pool[i:i + 1]))
        rest = torch.nonzero(~chosen).flatten()
        rest = rest[torch.argsort(-min_dist[rest], stable=True)]
        order = torch.cat([torch.tensor(picked, dtype=torch.long), rest])
        scores = torch.empty(len(pool))
        scores[order] = torch.arange(len(pool), dtype=torch.float32)
        return Ranking(order, scores)

    def _nearest(self, pool: Tensor, centres: Tensor) -> Tensor:
        return torch.cat([torch.cdist(part, centres).min(1).values for part in pool.split(self.chunk)])


def _features_and_residuals(ctx: SelectionContext, dataset) -> tuple[Tensor, Tensor]:
    """(penultimate features h [N, D], p - onehot(argmax p) [N, C]) over a dataset."""
    hs, rs = [], []
    for inputs, _, _ in evaluation.batches(ctx.model, ctx.adapter, ctx.loader(dataset), ctx.device):
        p = ctx.adapter.probabilities(ctx.adapter.forward(ctx.model, inputs)).double().cpu()
        hs.append(ctx.adapter.embed(ctx.model, inputs).double().cpu())
        rs.append(p - torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).double())
    return torch.cat(hs), torch.cat(rs)


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
        return then_the_rest(picked, -sq)
