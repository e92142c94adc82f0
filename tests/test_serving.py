"""Cluster serving: Label Studio's rule (least-solved cluster first, then the lowest score), emulated."""
from __future__ import annotations

from collections import Counter

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from isal_core.selection.serving import assign, kmeans, serving_order


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


def label_studio_rule(scores, clusters, counts_as, solved, budget):
    """Label Studio's query, literally: every time, order the remaining tasks by (solved count of their
    cluster, score, position) and take the first; the labeled task then counts in `counts_as`."""
    solved, left, order = Counter(solved), list(range(len(scores))), []
    while left and len(order) < budget:
        best = min(left, key=lambda i: (solved[clusters[i]], scores[i], i))
        order.append(best)
        left.remove(best)
        solved[counts_as[best]] += 1
    return order


@given(st.lists(st.tuples(st.floats(-5, 5), st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30),
       st.dictionaries(st.integers(0, 3), st.integers(0, 4)), st.integers(0, 30))
@settings(max_examples=300, deadline=None)
def test_serving_order_is_label_studio_rule_even_when_a_task_counts_in_another_cluster(tasks, solved, budget):
    """With predicted-class clusters a labeled task counts in the largest cluster of all its
    predictions (Label Studio's Max over versions), not always in the one it was served from."""
    scores, clusters, other = map(list, zip(*tasks))
    counts_as = [max(c, o) for c, o in zip(clusters, other)]
    expected = label_studio_rule(scores, clusters, counts_as, solved, budget)
    assert serving_order(scores, clusters, Counter(solved), budget, counts_as) == expected
    assert serving_order(scores, clusters, Counter(solved), budget) == label_studio_rule(
        scores, clusters, clusters, solved, budget)
