"""What every selection strategy shares: what it may look at, what it returns, and how it ranks.

A strategy ranks the whole pool (lower score = label sooner), so the backend can order
every task and the simulator can take any budget from the same ranking. The strategies
themselves are the leaves (baselines, diversity, isal); the name -> strategy factory is
the package's `__init__`, above them (isal_core.selection.make_strategy).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import NonFiniteError, SelectionError
from ..tasks.base import TaskAdapter
from ..train import evaluation


@dataclass
class SelectionContext:
    """What a strategy may look at. `labeled` and `reference` hold true labels."""

    model: nn.Module
    adapter: TaskAdapter
    pool: Dataset
    labeled: Dataset | None = None
    reference: Dataset | None = None
    device: torch.device | str = "cpu"
    batch_size: int = 128
    num_workers: int = 0
    budget: int | None = None
    progress: bool = False
    round_number: int = 0  # the round of active learning, for randomness that must change every round

    def loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=self.adapter.collate_fn)


@dataclass
class Ranking:
    """`order`: pool positions, first = label first. `scores`: per pool position, ascending = order."""

    order: Tensor
    scores: Tensor

    @classmethod
    def ascending(cls, scores: Tensor) -> Ranking:
        scores = scores.cpu() if scores.is_floating_point() else scores.float().cpu()  # float64 stays float64
        return cls(torch.argsort(scores, stable=True), scores)

    def top(self, budget: int) -> Tensor:
        return self.order[:check_budget(budget, len(self.order))]


def influence_ranking(scores, adapter, seed: int = 0) -> Ranking:
    """Ascending influence (PoolScores); samples the adapter calls unscored (a detection image with no
    pseudo-box) come after every scored one, in a seeded random order: drawn only when the scored
    pool is short, as in the reference code."""
    unscored = torch.tensor([bool(adapter.unscored(p)) for p in scores.predictions], dtype=torch.bool)
    if not unscored.any():
        return Ranking.ascending(scores.influence)
    values = scores.influence.cpu().clone()
    scored = (~unscored).nonzero().flatten()
    scored = scored[torch.argsort(values[scored], stable=True)]
    rest = unscored.nonzero().flatten()
    rest = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))]
    values[unscored] = float("inf")
    return Ranking(torch.cat([scored, rest]), values)


def check_budget(budget: int, pool_size: int) -> int:
    if pool_size == 0:
        raise SelectionError("the pool is empty: there is nothing to select")
    if budget < 1:
        raise SelectionError(f"budget must be at least 1, got {budget}")
    if budget > pool_size:
        raise SelectionError(f"budget {budget} is larger than the pool ({pool_size} samples)")
    return budget


class Strategy(ABC):
    name = "strategy"

    def rank(self, ctx: SelectionContext) -> Ranking:
        if len(ctx.pool) == 0:
            raise SelectionError("the pool is empty: there is nothing to rank")
        return self._rank(ctx)

    @abstractmethod
    def _rank(self, ctx: SelectionContext) -> Ranking: ...


class ScoreStrategy(Strategy):
    """A strategy that gives each sample a score; the ranking sorts it ascending."""

    def _rank(self, ctx):
        return Ranking.ascending(self.scores(ctx))

    @abstractmethod
    def scores(self, ctx: SelectionContext) -> Tensor: ...


def features(ctx: SelectionContext, dataset) -> Tensor:
    """The adapter's feature vectors (penultimate layer, or the frozen embeddings) of a dataset, [N, D]."""
    out = torch.cat([ctx.adapter.embed(ctx.model, inputs).float().cpu()
                     for inputs, _, _ in evaluation.batches(ctx.model, ctx.adapter, ctx.loader(dataset), ctx.device)])
    if not torch.isfinite(out).all():
        raise NonFiniteError("model features are NaN/inf")
    return out


def then_the_rest(picked: list[int], rest_key: Tensor) -> Ranking:
    """`picked` first, then every other position by ascending `rest_key`."""
    n = len(rest_key)
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[picked] = True
    rest = torch.nonzero(~chosen).flatten()
    rest = rest[torch.argsort(rest_key[rest], stable=True)]
    order = torch.cat([torch.tensor(picked, dtype=torch.long), rest])
    scores = torch.empty(n)
    scores[order] = torch.arange(n, dtype=torch.float32)
    return Ranking(order, scores)
