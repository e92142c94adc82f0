"""Cluster serving: Label Studio's rule (least-solved cluster first, then the lowest score), emulated."""
from __future__ import annotations

from collections import Counter

import torch

from isal_core.serving import assign, kmeans, serving_order


def test_the_least_solved_cluster_is_served_first_then_the_lowest_score():
    scores = [0.1, 0.2, 0.3, 0.15, 0.9, 0.05]
    clusters = [0, 0, 0, 1, 1, 2]
    # cluster 2 (0.05), then clusters 0 (0.1) and 1 (0.15) with one solved each... round robin by count
    assert serving_order(scores, clusters) == [5, 0, 3, 1, 4, 2]
    assert serving_order(scores, clusters, solved=Counter({0: 2})) == [5, 3, 4, 0, 1, 2]
    assert serving_order(scores, clusters, budget=2) == [5, 0]
    assert serving_order(scores, [0] * 6) == sorted(range(6), key=scores.__getitem__)  # one cluster: by score


def test_kmeans_is_seeded_and_separates_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(20, 2, generator=g) for c in centres])
    a, b = kmeans(x, 3, seed=1), kmeans(x, 3, seed=1)
    assert torch.equal(a, b)
    ids = assign(x, a)
    assert all(len(set(ids[i * 20:(i + 1) * 20].tolist())) == 1 for i in range(3)) and len(set(ids.tolist())) == 3
