"""ProbCover (Yehuda et al., 2022): label the samples whose balls cover the most of the pool not covered yet.

Every sample covers the samples within distance `delta` of it (L2-normalised features). With
few labels, a model is as good as the share of the data its labels cover, so the greedy
maximum coverage picks, one after another, the pool sample whose ball holds the most uncovered
samples; the labeled samples' balls are covered from the start. `delta` is the largest radius
whose balls stay "pure" for a share `alpha` of the samples, purity measured against k-means
clusters (k = the classes): a ball is pure when every sample in it shares its centre's cluster,
so each sample's purity breaks at its distance to the nearest sample of another cluster, and
delta is just under the distance that leaves a share alpha of the samples beyond it: exact, with
no grid of candidates.

The ball graph is kept sparse (chunked distances), so memory is O(edges), never N x N.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SelectionError
from .base import Ranking, SelectionContext, Strategy, features, then_the_rest
from .serving import assign, kmeans

CHUNK = 2048
MAX_EDGES = 50_000_000


def purity_radius(x: Tensor, ids: Tensor, alpha: float = 0.95) -> float:
    """The largest delta at which a share `alpha` of the rows of `x` has a pure ball (the module docstring)."""
    other = torch.empty(len(x), dtype=torch.float64)
    for start in range(0, len(x), CHUNK):
        d = torch.cdist(x[start:start + CHUNK], x)
        d[ids[start:start + CHUNK, None] == ids[None, :]] = float("inf")
        other[start:start + CHUNK] = d.min(1).values
    # pure at delta <=> delta < its distance to another cluster: at most floor((1 - alpha) N) samples may be nearer
    impure = int((1 - alpha) * len(x) + 1e-9)
    edge = float(other.sort().values[min(impure, len(x) - 1)])
    return edge * (1 - 1e-9) if edge != float("inf") else edge  # (one cluster: every ball is pure)


def ball_graph(x: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """CSR (indptr, indices) of every row's neighbours within `delta`, itself included."""
    rows, cols = [], []
    for start in range(0, len(x), CHUNK):
        r, c = (torch.cdist(x[start:start + CHUNK], x) <= delta).nonzero(as_tuple=True)
        rows.append(r + start)
        cols.append(c)
        if sum(len(c) for c in cols) > MAX_EDGES:
            raise SelectionError(f"ProbCover's ball graph at delta {delta:.3g} exceeds {MAX_EDGES:,} edges: give a "
                                 "smaller delta (or a higher alpha)")
    rows, cols = torch.cat(rows), torch.cat(cols)
    indptr = torch.zeros(len(x) + 1, dtype=torch.long)
    indptr[1:] = torch.bincount(rows, minlength=len(x)).cumsum(0)
    return indptr, cols


def _neighbours(indptr: Tensor, indices: Tensor, rows: Tensor) -> Tensor:
    if len(rows) == 0:
        return indices[:0]
    return torch.cat([indices[indptr[r]:indptr[r + 1]] for r in rows.tolist()])


def max_coverage(indptr: Tensor, indices: Tensor, candidates: Tensor, covered: Tensor, budget: int) -> list[int]:
    """Greedy maximum coverage: up to `budget` of `candidates` (rows), each the one whose ball holds the most
    rows not yet `covered` (ties: the lower row); stops early once nothing is left to cover."""
    n = len(indptr) - 1
    covered = covered.clone()
    edge_rows = torch.repeat_interleave(torch.arange(n), indptr[1:] - indptr[:-1])
    gain = torch.bincount(edge_rows[~covered[indices]], minlength=n)  # uncovered rows in each ball
    allowed = torch.zeros(n, dtype=torch.bool)
    allowed[candidates] = True
    picked: list[int] = []
    while len(picked) < budget:
        masked = torch.where(allowed, gain, -1)
        best = int(masked.argmax())
        if masked[best] <= 0:
            break
        picked.append(best)
        allowed[best] = False
        ball = indices[indptr[best]:indptr[best + 1]]
        fresh = ball[~covered[ball]]
        covered[fresh] = True
        gain -= torch.bincount(_neighbours(indptr, indices, fresh), minlength=n)
    return picked


@dataclass
class ProbCover(Strategy):
    """ProbCover on the features (frozen embeddings, or the model's penultimate layer), L2-normalised."""

    alpha: float = 0.95
    delta: float | None = None  # None: purity_radius with k-means on labeled + pool, k = the classes
    seed: int = 0
    name = "probcover"

    def _rank(self, ctx: SelectionContext) -> Ranking:
        pool = torch.nn.functional.normalize(features(ctx, ctx.pool).double(), dim=1)
        known = ctx.labeled is not None and len(ctx.labeled) > 0
        labeled = torch.nn.functional.normalize(features(ctx, ctx.labeled).double(), dim=1) if known else \
            pool[:0]
        x = torch.cat([labeled, pool])
        delta = self.delta
        if delta is None:
            k = int(getattr(ctx.adapter, "num_classes", None) or 10)
            delta = purity_radius(x, assign(x, kmeans(x, k, self.seed)), self.alpha)
        indptr, indices = ball_graph(x, delta)
        covered = torch.zeros(len(x), dtype=torch.bool)
        covered[_neighbours(indptr, indices, torch.arange(len(labeled)))] = True
        candidates = torch.arange(len(labeled), len(x))
        budget = ctx.budget or len(pool)
        picked = [i - len(labeled) for i in max_coverage(indptr, indices, candidates, covered, budget)]
        degree = (indptr[1:] - indptr[:-1])[len(labeled):].double()
        return then_the_rest(picked, -degree)  # the rest: the densest first
