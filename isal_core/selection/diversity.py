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
from .base import SelectionContext, Strategy, features, then_the_rest


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
        budget = len(pool) if ctx.budget is None else min(ctx.budget, len(pool))
        labeled = features(ctx, ctx.labeled) if ctx.labeled is not None and len(ctx.labeled) > 0 else None
        picked, min_dist = k_center_greedy(pool, labeled, budget, self.chunk)
        return then_the_rest(picked, -min_dist)  # the rest farthest from every centre first


def k_center_greedy(points: Tensor, centres: Tensor | None, budget: int, chunk: int = 1024) -> tuple[list[int], Tensor]:
    """Sener & Savarese's greedy: `budget` rows of `points`, each the farthest from `centres` and the picks before
    it (no centres: the first row first). Returns the picks and every row's distance to its nearest centre or
    pick (-1 at the picks). Distances chunk by chunk: memory O(N x chunk), never N x N."""
    min_dist = torch.full((len(points),), float("inf"), dtype=points.dtype)
    if centres is not None:
        for part in centres.split(chunk):
            min_dist = torch.minimum(min_dist, _nearest(points, part, chunk))
    picked: list[int] = []
    for _ in range(min(budget, len(points))):
        i = int(torch.argmax(min_dist))
        picked.append(i)
        min_dist = torch.minimum(min_dist, _nearest(points, points[i:i + 1], chunk))
        min_dist[i] = -1.0
    return picked, min_dist


def _nearest(points: Tensor, centres: Tensor, chunk: int) -> Tensor:
    return torch.cat([torch.cdist(part, centres).min(1).values for part in points.split(chunk)])


def _features_and_residuals(ctx: SelectionContext, dataset) -> tuple[Tensor, Tensor]:
    """(penultimate features h [N, D], d loss / d logits at the model's own label [N, C]: p - onehot(argmax p)
    for classification) over a dataset."""
    hs, rs = [], []
    for inputs, _, _ in evaluation.batches(ctx.model, ctx.adapter, ctx.loader(dataset), ctx.device):
        rs.append(ctx.adapter.logit_residual(ctx.adapter.forward(ctx.model, inputs)).double().cpu())
        hs.append(ctx.adapter.embed(ctx.model, inputs).double().cpu())
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
