"""The cold start's order (TypiClust) on embeddings whose answer is known, and where it may be used."""
from __future__ import annotations

import pytest
import torch

from isal_core.errors import ConfigError
from isal_core.selection.coldstart import typicality, typiclust_order
from isal_core.simulation.config import load_config


def blobs():
    """Four tight, far-apart groups of 40, 30, 20 and 10 points; each group's first point is its centre."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    groups = [torch.cat([c[None], c + 0.5 * torch.randn(n - 1, 2, generator=g)])
              for c, n in zip(centres, (40, 30, 20, 10))]
    starts = [0, 40, 70, 90]
    return torch.cat(groups), starts


def test_the_first_picks_are_one_typical_sample_of_each_cluster_largest_first():
    x, starts = blobs()
    order = typiclust_order(x, clusters=4, seed=0, neighbors=5)
    assert sorted(order) == list(range(100))
    group = lambda i: max(k for k, s in enumerate(starts) if i >= s)  # noqa: E731
    assert [group(i) for i in order[:4]] == [0, 1, 2, 3]  # one per cluster, the largest first
    for i in order[:4]:  # the most typical of its group
        members = torch.arange(starts[group(i)], (starts + [100])[group(i) + 1])
        assert typicality(x[members], 5).argmax() == i - starts[group(i)]
    assert [group(i) for i in order[4:8]] == [0, 1, 2, 3]  # then the second most typical of each


def test_typicality_is_the_inverse_mean_distance_to_the_nearest_neighbours():
    x = torch.tensor([[0.0], [1.0], [3.0]])
    assert torch.allclose(typicality(x, neighbors=1), torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64))
    assert typiclust_order(torch.zeros(0, 2), 3) == [] and typiclust_order(torch.zeros(1, 2), 3) == [0]


def test_a_typiclust_initial_set_needs_frozen_features():
    with pytest.raises(ConfigError, match="typiclust .* needs task: classification or tagging and weights"):
        load_config(None, initial_strategy="typiclust", arch="small_cnn", weights=None)
