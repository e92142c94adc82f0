"""Diverse serving, native to Label Studio: clusters of the frozen embeddings, and Label Studio's own rule.

Label Studio Community's uncertainty sampling (projects/functions/next_task.py) orders
the unlabeled tasks first by how many tasks the annotator already solved in the same
`prediction.cluster`, then by the prediction's score. So a `cluster` on every prediction
makes Label Studio itself serve the highest-influence task of the least-labeled cluster:
no class (or region of the feature space) is starved, which influence alone tends to do.

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
    centroids = [x[torch.randint(len(x), (1,), generator=g)].squeeze(0)]
    dist = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        if dist.sum() <= 0:
            break
        centroids.append(x[torch.multinomial(dist / dist.sum(), 1, generator=g)].squeeze(0))
        dist = torch.minimum(dist, ((x - centroids[-1]) ** 2).sum(1))
    c = torch.stack(centroids)
    for _ in range(iters):
        ids = assign(x, c)
        moved = torch.stack([x[ids == j].mean(0) if (ids == j).any() else c[j] for j in range(len(c))])
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
