"""Diverse serving: the best task of the least-labeled cluster, one after another.

Influence alone tends to starve whole classes (or regions of the feature space); serving
the best-ranked task of the cluster that holds the fewest labeled tasks, then the next, does
not. `served_order` turns a strategy's ranking into that order; the backend writes it into
each prediction's score, so Label Studio serves it and its Data Manager sorts by it with no
`cluster` field (and so through the bulk import). `serving_order` is the rule itself, as
Label Studio Community's uncertainty sampling applies it to a prediction's `cluster`
(projects/functions/next_task.py: least solved cluster first, then the lowest score).

With frozen features the clusters are k-means on the backbone's embeddings, fitted once per
project and backbone and saved, so a task keeps its cluster id across model versions. A model
trained from scratch each round has no fixed feature space: its clusters are the predicted
classes (ids that keep their meaning, though a task's may change between versions).
`serving_order` is the same rule, for the offline simulation to select what Label Studio
would serve.
"""
from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence

import torch


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> torch.Tensor:
    """Centroids [k, D] of Lloyd's k-means with seeded k-means++ initialisation (float64, deterministic)."""
    x = x.double()
    k = min(k, len(x))
    g = torch.Generator().manual_seed(seed)
    squares = (x * x).sum(1)

    def to(c: torch.Tensor) -> torch.Tensor:  # squared distances to c: a matrix-vector product, no N x D temporary
        return (squares - 2 * (x @ c) + c @ c).clamp_min(0)

    centroids = [x[torch.randint(len(x), (1,), generator=g)].squeeze(0)]
    dist = to(centroids[0])
    for _ in range(1, k):
        if dist.sum() <= 0:
            break
        centroids.append(x[torch.multinomial(dist / dist.sum(), 1, generator=g)].squeeze(0))
        dist = torch.minimum(dist, to(centroids[-1]))
    c = torch.stack(centroids)
    for _ in range(iters):
        ids = assign(x, c)
        counts = torch.bincount(ids, minlength=len(c)).unsqueeze(1)
        sums = torch.zeros_like(c).index_add_(0, ids, x)  # every cluster's mean at once, not one mask per cluster
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        if torch.equal(moved, c):
            break
        c = moved
    return c


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The nearest centroid of each row (ties: the lower id)."""
    return torch.cdist(x.double(), centroids.double()).argmin(1)


def serving_order(scores: Sequence[float], clusters: Sequence[int], solved: Counter | None = None,
                  budget: int | None = None, counts_as: Sequence[int] | None = None) -> list[int]:
    """Positions in the order Label Studio serves them: the task of the least-solved cluster with the
    lowest score, ties by position. A served task then counts as solved in `counts_as[i]` (default:
    its cluster): Label Studio counts a labeled task in the largest cluster of all its predictions,
    of every model version, which differs from the current one when ids change between versions."""
    solved = Counter(solved or {})
    counts_as = clusters if counts_as is None else counts_as
    queues: dict[int, list[tuple[float, int]]] = {}
    for i, (score, cluster) in enumerate(zip(scores, clusters)):
        queues.setdefault(int(cluster), []).append((float(score), i))
    for queue in queues.values():
        queue.sort(reverse=True)  # the next task of a cluster is at the end
    heads = [(solved[c], q[-1][0], q[-1][1], c) for c, q in queues.items()]
    heapq.heapify(heads)
    order, budget = [], len(scores) if budget is None else budget
    while heads and len(order) < budget:
        _, _, i, c = heapq.heappop(heads)
        order.append(i)
        queues[c].pop()
        if counts_as[i] == c:
            solved[c] += 1
        else:  # another cluster's count grows: rebuild the heap (one entry per cluster)
            solved[int(counts_as[i])] += 1
            heads = [(solved[k], q[-1][0], q[-1][1], k) for k, q in queues.items() if q and k != c]
            heapq.heapify(heads)
        if queues[c]:
            heapq.heappush(heads, (solved[c], queues[c][-1][0], queues[c][-1][1], c))
    return order


def served_order(ranked: Sequence[int], clusters: Sequence[int], labeled_clusters: Sequence[int] = ()) -> list[int]:
    """`ranked` (positions, best first) reordered: the best of the cluster with the fewest labeled tasks, one
    after another. `clusters[i]` is position i's cluster; `labeled_clusters`, those of the tasks labeled so
    far. The whole list comes back, so any prefix of it is what an annotator following it labels."""
    rank = {int(p): r for r, p in enumerate(ranked)}
    positions = [int(p) for p in ranked]
    picked = serving_order([rank[p] for p in positions], [int(clusters[p]) for p in positions],
                           Counter(int(c) for c in labeled_clusters))
    return [positions[i] for i in picked]
