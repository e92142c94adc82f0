"""TypiClust (Hacohen et al., 2022): typical and diverse samples first, as a cold start before any model
and as a strategy for every round.

With no labels there is no model to ask for influence or uncertainty, but a frozen
pretrained backbone already embeds every image. TypiClust (Hacohen et al., 2022) labels the
most typical sample of each cluster of the embeddings, largest clusters first: at budgets of
10 to 100 labels it beats random on CIFAR-10 by several points, where uncertainty and
influence, with no model yet, cannot. Here k-means makes `clusters` clusters; a sample's
typicality is the inverse of its mean distance to its `neighbors` nearest neighbours in its
cluster (within the cluster, not the whole pool, so memory stays O(cluster^2)); the order
takes the most typical sample of each cluster (largest first), then the second most typical
of each, and so on, so any prefix of it is spread over the clusters.

In a later round (`TypiClust`, the paper's algorithm) the clusters are as many as the labeled
samples plus the budget, fitted on labeled and pool together; clusters that hold a labeled
sample are covered and come after every uncovered one, so the batch goes to the largest regions
of the feature space that no label speaks for yet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Ranking, SelectionContext, Strategy, features, then_the_rest
from .isal import BatchISAL
from .serving import assign, kmeans


def typicality(x: Tensor, neighbors: int = 20) -> Tensor:
    """1 / mean distance to the `neighbors` nearest other rows (a single row: 1)."""
    if len(x) <= 1:
        return torch.ones(len(x), dtype=torch.float64)
    k = min(neighbors, len(x) - 1)
    d = torch.cdist(x.double(), x.double())
    d.fill_diagonal_(float("inf"))
    return 1.0 / d.topk(k, largest=False).values.mean(1).clamp_min(1e-12)


def typiclust_order(x: Tensor, clusters: int, seed: int = 0, neighbors: int = 20,
                    labeled: Tensor | None = None) -> list[int]:
    """Every row of `x` (embeddings, [N, D]) in TypiClust's order (the module docstring); with `labeled`
    (their embeddings), clusters are fitted on both and those holding a labeled row come last."""
    if len(x) == 0:
        return []
    known = labeled if labeled is not None else x.new_zeros(0, x.shape[1])
    both = torch.cat([known.to(x.dtype), x])
    centroids = kmeans(both, max(1, min(clusters, len(both))), seed)
    ids = assign(both, centroids)
    covered = set(ids[:len(known)].tolist())
    queues = []
    for c in range(len(centroids)):
        members = (ids == c).nonzero().flatten()
        mine = members[members >= len(known)]
        if len(mine):
            typical = typicality(both[members], neighbors)[members >= len(known)]
            best_first = mine[torch.argsort(-typical, stable=True)] - len(known)
            queues.append((c in covered, -len(members), best_first.tolist()))
    queues.sort(key=lambda q: (q[0], q[1], q[2][0]))  # uncovered first, largest first; ties by position
    out: list[int] = []
    for depth in range(max(len(q[2]) for q in queues)):
        out.extend(q[2][depth] for q in queues if depth < len(q[2]))
    return out


@dataclass
class TypiClust(Strategy):
    """TypiClust in every round: k-means with as many clusters as labeled samples plus the budget on the
    features (frozen embeddings, or the model's penultimate layer), the most typical pool sample of each
    uncovered cluster, largest first (the module docstring). Seeded by the seed alone, not the round: a job
    number differs between the backend (a cold start is a job) and the simulation, the order must not."""

    seed: int = 0
    neighbors: int = 20
    name = "typiclust"

    def _rank(self, ctx: SelectionContext) -> Ranking:
        pool = features(ctx, ctx.pool).double()
        labeled = features(ctx, ctx.labeled).double() if ctx.labeled is not None and len(ctx.labeled) else None
        budget = ctx.budget or min(len(pool), 10)
        k = budget + (0 if labeled is None else len(labeled))
        order = typiclust_order(pool, k, self.seed, self.neighbors, labeled)  # (k changes every round)
        places = torch.empty(len(order), dtype=torch.float64)
        places[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order), dtype=torch.float64)
        return Ranking(torch.tensor(order, dtype=torch.long), places)


@dataclass
class TypicalISAL(BatchISAL):
    """ISAL's batch spread by TypiClust's clusters instead of k-center: k-means with as many clusters as labeled
    samples plus the budget, and in each uncovered cluster, largest first, the most helpful by influence among
    its `typical_share` most typical members; the rest of the pool by influence. With few labels, typicality
    keeps the picks on dense, representative images, where the pseudo-labels of a weak model are likeliest
    right; influence chooses among them."""

    typical_share: float = 0.2
    neighbors: int = 20
    name = "isal_typical"

    def rank_by(self, ctx: SelectionContext, influence: Ranking) -> Ranking:
        n = len(influence.order)
        place = torch.empty(n, dtype=torch.float64)
        place[influence.order] = torch.arange(n, dtype=torch.float64)
        place[~torch.isfinite(influence.scores.double())] = float("inf")  # unscored: never a pick
        pool = features(ctx, ctx.pool).double()
        known = features(ctx, ctx.labeled).double() if ctx.labeled is not None and len(ctx.labeled) else pool[:0]
        budget = min(ctx.budget or 10, n)
        both = torch.cat([known, pool])
        ids = assign(both, kmeans(both, budget + len(known), self.isal.seed))
        covered = set(ids[:len(known)].tolist())
        sizes = torch.bincount(ids, minlength=int(ids.max()) + 1)
        picked: list[int] = []
        for c in sorted(set(ids[len(known):].tolist()) - covered, key=lambda c: (-int(sizes[c]), c)):
            members = (ids == c).nonzero().flatten()
            mine = members[members >= len(known)]
            typical = typicality(both[members], self.neighbors)[members >= len(known)]
            top = mine[torch.argsort(-typical, stable=True)][:max(1, math.ceil(self.typical_share * len(mine)))]
            best = int(top[torch.argmin(place[top - len(known)])]) - len(known)
            if math.isfinite(place[best]):
                picked.append(best)
            if len(picked) == budget:
                break
        return then_the_rest(picked, place)
