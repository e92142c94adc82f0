"""TypiClust in every round and ProbCover (the low-budget literature's strategies) against answers worked out
by hand: which cluster is covered, which ball covers most, and the purity radius."""
from __future__ import annotations

import torch
from torch import nn

from isal_core.data.images import TensorDataset3
from isal_core.selection import ProbCover, SelectionContext, TypiClust, make_strategy
from isal_core.selection.coldstart import typicality
from isal_core.selection.coverage import ball_graph, max_coverage, purity_radius
from isal_core.tasks.classification import ClassificationAdapter

try:
    from test_coldstart import blobs
except ImportError:  # tests/ imported as a package
    from tests.test_coldstart import blobs


def context(pool_x, labeled_x=None, budget=None) -> SelectionContext:
    """A model whose last layer's input is the pool's own rows: the features are the numbers written here."""
    model = nn.Sequential(nn.Identity(), nn.Linear(pool_x.shape[1], 2)).double()
    pool = TensorDataset3(pool_x.double(), torch.full((len(pool_x),), -1))
    labeled = None if labeled_x is None else TensorDataset3(labeled_x.double(), torch.zeros(len(labeled_x)).long())
    return SelectionContext(model, ClassificationAdapter(), pool, labeled, batch_size=16, budget=budget)


def group_of(i, starts):
    return max(k for k, s in enumerate(starts) if i >= s)


def test_typiclust_covers_the_largest_unlabeled_clusters_first():
    x, starts = blobs()  # four far-apart groups of 40, 30, 20 and 10
    labeled, pool = x[1:2], torch.cat([x[:1], x[2:]])  # one label in the largest group
    pool_starts = [0, 39, 69, 89]
    ranking = TypiClust(seed=0, neighbors=5).rank(context(pool, labeled, budget=3))  # k = 1 + 3: the groups
    order = ranking.order.tolist()
    assert sorted(order) == list(range(99))
    assert [group_of(i, pool_starts) for i in order[:4]] == [1, 2, 3, 0]  # uncovered, largest first; covered last
    for i in order[1:3]:  # each the most typical member of its group
        g = group_of(i, pool_starts)
        members = torch.arange(pool_starts[g], (pool_starts + [99])[g + 1])
        assert typicality(pool[members], 5).argmax() == i - pool_starts[g]
    assert ranking.scores[ranking.order].tolist() == sorted(ranking.scores.tolist())
    assert make_strategy("typiclust", seed=1).seed == 1


def test_the_ball_that_covers_most_is_picked_then_the_next():
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [10.0], [11.0], [20.0]])
    indptr, indices = ball_graph(x, 1.0)  # row 1's ball: 0, 1, 2; row 5's: 10, 11; row 7's: itself
    assert indices[indptr[1]:indptr[2]].tolist() == [0, 1, 2] and indices[indptr[7]:indptr[8]].tolist() == [7]
    none = torch.zeros(8, dtype=torch.bool)
    # gains 3, 3, 3 (rows 1-3): the lowest row; then {3, 4} via row 3; then {10, 11}; then {20}; then nothing left
    assert max_coverage(indptr, indices, torch.arange(8), none, budget=10) == [1, 3, 5, 7]
    covered = none.clone()
    covered[[5, 6]] = True  # a labeled sample at 11 covers 10 and 11 already
    assert max_coverage(indptr, indices, torch.arange(8), covered, budget=10) == [1, 3, 7]
    assert max_coverage(indptr, indices, torch.tensor([0, 4, 7]), none, budget=2) == [0, 4]  # candidates only


def test_the_purity_radius_is_the_largest_that_keeps_alpha_of_the_balls_pure():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [12.0]], dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 1, 1])  # distances to the other cluster: 10, 9, 8, 8, 10
    delta = purity_radius(x, ids, alpha=0.6)  # 3 of 5 must stay pure: just under 9
    assert 8.999 < delta < 9

    def purity(d):
        return (torch.cdist(x, x) <= d).logical_and(ids[:, None] != ids[None]).any(1).logical_not().double().mean()

    assert purity(delta) >= 0.6 and purity(9.0) < 0.6
    assert purity_radius(x, torch.zeros(5, dtype=torch.long)) == float("inf")  # one cluster: every ball is pure


def test_probcover_ranks_the_densest_uncovered_region_first():
    g = torch.Generator().manual_seed(0)
    angles = torch.cat([0.02 * torch.randn(30, generator=g), 1.5 + 0.02 * torch.randn(10, generator=g),
                        3.0 + 0.02 * torch.randn(5, generator=g)])  # three arcs of 30, 10 and 5 on the circle
    pool = torch.stack([angles.cos(), angles.sin()], 1)
    order = ProbCover(delta=0.2).rank(context(pool, budget=3)).order.tolist()
    region = lambda i: 0 if i < 30 else 1 if i < 40 else 2  # noqa: E731
    assert [region(i) for i in order[:3]] == [0, 1, 2] and sorted(order) == list(range(45))
    labeled = torch.tensor([[1.0, 0.0]])  # a label inside the largest arc covers it
    order = ProbCover(delta=0.2).rank(context(pool, labeled, budget=2)).order.tolist()
    assert [region(i) for i in order[:2]] == [1, 2]
    # delta from purity (k-means; k = 10 when the adapter names no classes)
    auto = ProbCover().rank(context(pool, budget=3)).order.tolist()
    assert sorted(auto) == list(range(45))


def test_isal_typical_takes_the_most_helpful_of_the_typical_members_of_each_uncovered_cluster():
    from isal_core.selection import ISAL, Ranking, TypicalISAL

    x, _ = blobs()  # groups of 40, 30, 20, 10 (pool positions 0-38, 39-68, 69-88, 89-98 after one label)
    labeled, pool = x[1:2], torch.cat([x[:1], x[2:]])
    starts = [0, 39, 69, 89]
    ctx = context(pool, labeled, budget=3)
    influence = torch.arange(99, dtype=torch.float64)  # position order: lower positions more helpful
    farthest = [max(range(s, e), key=lambda i: float((pool[i] - pool[s]).norm())) for s, e in
                zip(starts, starts[1:] + [99])]  # each group's least typical member
    influence[farthest] = -1000.0 - torch.arange(4, dtype=torch.float64)  # ... made the most helpful of all
    ranking = Ranking.ascending(influence)
    typical_first = TypicalISAL(ISAL(), typical_share=0.2, neighbors=5).rank_by(ctx, ranking).order.tolist()
    assert [group_of(i, starts) for i in typical_first[:3]] == [1, 2, 3]  # the uncovered groups, largest first
    assert not set(typical_first[:3]) & set(farthest)  # outliers, however helpful, are not typical
    for i in typical_first[:3]:  # each the most helpful (lowest position) of its group's typical fifth
        g = group_of(i, starts)
        members = torch.arange(starts[g], (starts + [99])[g + 1])
        share = max(1, -(-len(members) // 5))
        top = members[torch.argsort(-typicality(pool[members], 5), stable=True)[:share]]
        assert i == int(top.min())
    anywhere = TypicalISAL(ISAL(), typical_share=1.0, neighbors=5).rank_by(ctx, ranking).order.tolist()
    assert anywhere[:3] == farthest[1:]  # with the whole cluster eligible, influence alone picks in it
    rest = typical_first[3:]
    assert rest == sorted(rest, key=lambda i: float(influence[i]))  # the rest by influence
