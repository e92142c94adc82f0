"""Every baseline's ranking against the answer worked out by hand on outputs made for it.

A model that returns its input (nn.Identity) turns the pool's items into the model's
logits, so entropy, margin and least confidence see exactly the numbers written here;
a linear last layer makes its input the features coreset and BADGE embed.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from isal_core.data.images import TensorDataset3
from isal_core.selection import BADGE, Coreset, Entropy, LeastConfidence, Margin, Random, SelectionContext
from isal_core.tasks.classification import ClassificationAdapter

ADAPTER = ClassificationAdapter()


def logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probabilities, dtype=torch.float64).log()


def context(pool_x, labeled_x=None, budget=None, model=None, round_=0) -> SelectionContext:
    pool = TensorDataset3(pool_x, torch.full((len(pool_x),), -1))
    labeled = None if labeled_x is None else TensorDataset3(labeled_x, torch.zeros(len(labeled_x), dtype=torch.long))
    return SelectionContext(model or nn.Identity(), ADAPTER, pool, labeled, batch_size=2, budget=budget,
                            round_number=round_)


# probabilities of 4 pool samples over 3 classes, and what each baseline must rank first
P = [[0.80, 0.15, 0.05],   # 0: confident
     [0.34, 0.33, 0.33],   # 1: nearly uniform: highest entropy, lowest confidence
     [0.50, 0.48, 0.02],   # 2: two classes almost tied: the smallest margin
     [0.60, 0.20, 0.20]]   # 3


def test_entropy_ranks_the_most_uncertain_first():
    entropy = [-sum(p * math.log(p) for p in row) for row in P]
    expected = sorted(range(4), key=lambda i: -entropy[i])
    assert expected == [1, 3, 2, 0]
    assert Entropy().rank(context(logits_of(P))).order.tolist() == expected


def test_margin_ranks_the_closest_top_two_first():
    margins = [sorted(row)[-1] - sorted(row)[-2] for row in P]  # 0.65, 0.01, 0.02, 0.40
    assert sorted(range(4), key=lambda i: margins[i]) == [1, 2, 3, 0]
    assert Margin().rank(context(logits_of(P))).order.tolist() == [1, 2, 3, 0]


def test_least_confidence_ranks_the_lowest_top_probability_first():
    assert LeastConfidence().rank(context(logits_of(P))).order.tolist() == [1, 2, 3, 0]  # 0.34, 0.50, 0.60, 0.80


def linear_features(points: list[list[float]]) -> tuple[torch.Tensor, nn.Module]:
    """Points as the input of the model's last (and only) linear layer: the features coreset sees."""
    return torch.tensor(points, dtype=torch.float32), nn.Linear(2, 3)


def test_coreset_is_k_center_greedy_from_the_labeled_set():
    # labeled: the origin. Pool distances to it: a 1, b 5, c 4.9 (next to b), d 3 (opposite side).
    pool, model = linear_features([[1, 0], [5, 0], [4.9, 0.3], [-3, 0]])
    labeled, _ = linear_features([[0, 0]])
    # greedy: b (5 from the origin); then d (3 from the origin, 8 from b) beats c (0.3 from b) and a (1);
    # then a (1 from the origin) beats c (~0.32 from b); the rest by distance to the centres: c.
    order = Coreset().rank(context(pool, labeled, budget=3, model=model)).order.tolist()
    assert order == [1, 3, 0, 2]


def test_badge_seeds_with_the_largest_gradient_then_samples_by_distance():
    """logits = (h_x, 0), so the gradient embedding is r (x) h with r = p - onehot(argmax p). Samples 0, 1
    and 3 are the same point (the largest gradient, ||g||^2 = 0.72; 0 comes first), 2 is another
    (||g||^2 = 0.14, at distance^2 0.58 from them). Once 0 is picked, 1 and 3 are at distance 0 and
    cannot be drawn: the second pick is 2 whatever the seed, and the rest follow by gradient norm."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    pool = torch.tensor([[1.0, 2.0], [1.0, 2.0], [-1.0, 0.0], [1.0, 2.0]])
    for seed in range(5):
        assert BADGE(seed=seed).rank(context(pool, budget=2, model=model)).order.tolist() == [0, 2, 1, 3], seed


def test_random_draws_afresh_each_round_and_repeats_a_round_exactly():
    pool = torch.zeros(50, 2)
    orders = [Random(seed=7).rank(context(pool, round_=r)).order.tolist() for r in (1, 2, 3)]
    assert len({tuple(o) for o in orders}) == 3  # a new draw every round ...
    assert Random(seed=7).rank(context(pool, round_=2)).order.tolist() == orders[1]  # ... the same one again
    assert Random(seed=8).rank(context(pool, round_=2)).order.tolist() != orders[1]
