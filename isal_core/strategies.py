"""Selection strategies: ISAL and the baselines it is compared with, one interface.

Each strategy ranks the whole pool (lower score = label sooner), so the backend can
order every task and the simulator can take any budget from the same ranking.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import evaluation
from .adapter import TaskAdapter
from .errors import ConfigError, NonFiniteError, SelectionError
from .gradients import HessianOperator, collect_batches, reference_gradient
from .params import select_parameters
from .scorer import InfluenceScorer, PoolScores
from .settings import InfluenceSettings
from .stest import CG, Identity, SolveResult, solver_from

log = logging.getLogger(__name__)


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


@dataclass
class Random(ScoreStrategy):
    seed: int = 0
    name = "random"

    def scores(self, ctx):
        return torch.rand(len(ctx.pool), generator=torch.Generator().manual_seed(self.seed))


def _probabilities(ctx: SelectionContext) -> Tensor:
    out = torch.cat([ctx.adapter.probabilities(outputs).float().cpu()
                     for outputs, _, _ in evaluation.outputs(ctx.model, ctx.adapter, ctx.loader(ctx.pool), ctx.device)])
    if not torch.isfinite(out).all():
        raise NonFiniteError("model probabilities are NaN/inf")
    return out


class Entropy(ScoreStrategy):
    name = "entropy"

    def scores(self, ctx):
        p = _probabilities(ctx)
        return (p * p.clamp_min(1e-12).log()).sum(1)  # = -entropy: most uncertain first


class Margin(ScoreStrategy):
    name = "margin"

    def scores(self, ctx):
        top2 = _probabilities(ctx).topk(2, dim=1).values
        return top2[:, 0] - top2[:, 1]


class LeastConfidence(ScoreStrategy):
    """Lowest confidence first: the top class probability, or the adapter's own confidence (detection:
    the mean max-class score of an image's boxes)."""

    name = "least_confidence"

    def scores(self, ctx):
        out = torch.cat([ctx.adapter.confidence(outputs).float().cpu()
                         for outputs, _, _ in evaluation.outputs(ctx.model, ctx.adapter, ctx.loader(ctx.pool),
                                                                 ctx.device)])
        if not torch.isfinite(out).all():
            raise NonFiniteError("model confidences are NaN/inf")
        return out


@dataclass
class Coreset(Strategy):
    """k-center greedy (Sener & Savarese) on penultimate features.

    Distances are computed chunk by chunk: memory O(N x chunk), never N x N. The first
    `ctx.budget` picks are greedy; the rest of the pool follows by distance to the
    chosen centres, farthest first.
    """

    chunk: int = 1024
    name = "coreset"

    def _rank(self, ctx):
        pool = self._embed(ctx, ctx.pool)
        min_dist = torch.full((len(pool),), float("inf"))
        if ctx.labeled is not None and len(ctx.labeled) > 0:
            for centres in self._embed(ctx, ctx.labeled).split(self.chunk):
                min_dist = torch.minimum(min_dist, self._nearest(pool, centres))
        budget = len(pool) if ctx.budget is None else min(ctx.budget, len(pool))
        picked = []
        chosen = torch.zeros(len(pool), dtype=torch.bool)
        for _ in range(budget):
            i = int(torch.argmax(torch.where(chosen, -1.0, min_dist)))
            if not torch.isfinite(min_dist[i]):
                i = int(torch.nonzero(~chosen)[0])  # no labeled set: start anywhere
            picked.append(i)
            chosen[i] = True
            min_dist = torch.minimum(min_dist, self._nearest(pool, pool[i:i + 1]))
        rest = torch.nonzero(~chosen).flatten()
        rest = rest[torch.argsort(-min_dist[rest], stable=True)]
        order = torch.cat([torch.tensor(picked, dtype=torch.long), rest])
        scores = torch.empty(len(pool))
        scores[order] = torch.arange(len(pool), dtype=torch.float32)
        return Ranking(order, scores)

    def _nearest(self, pool: Tensor, centres: Tensor) -> Tensor:
        return torch.cat([torch.cdist(part, centres).min(1).values for part in pool.split(self.chunk)])

    def _embed(self, ctx, dataset) -> Tensor:
        features = torch.cat([ctx.adapter.embed(ctx.model, inputs).float().cpu()
                              for inputs, _, _ in evaluation.batches(ctx.model, ctx.adapter, ctx.loader(dataset),
                                                                     ctx.device)])
        if not torch.isfinite(features).all():
            raise NonFiniteError("model features are NaN/inf")
        return features


@dataclass
class ISAL(ScoreStrategy):
    """Influence on the reference loss: I(z) = -grad l(R)^T (H + damping I)^-1 G_z.

    reference: "given" uses ctx.reference (the paper); "labeled" uses the current
    labeled set (ISAL_v3). For ISAL_v2 pass the initial labeled set as ctx.reference.
    hessian_samples caps how many labeled samples define H (seeded subset; None = all).
    """

    solver: Any = field(default_factory=CG)
    params: Any = "weights"
    top_k: int = 1
    reference: str = "given"
    hessian_samples: int | None = 1024
    seed: int = 0
    name = "isal"

    def scores(self, ctx):
        return self.pool_scores(ctx).influence

    def pool_scores(self, ctx) -> PoolScores:
        return self.prepare(ctx).score(ctx.model, ctx.adapter, ctx.pool, ctx.device, ctx.batch_size,
                                       ctx.num_workers, ctx.progress)

    def _rank(self, ctx):
        return influence_ranking(self.pool_scores(ctx), ctx.adapter, self.seed)

    def prepare(self, ctx: SelectionContext) -> InfluenceScorer:
        """s_test over the parameters `self.params` selects, as a scorer for any pool, now or later."""
        solved = self.s_test(ctx)
        names = [n for n, _ in select_parameters(ctx.model, self.params)]
        info = {k: v for k, v in solved.info.items() if k != "norms"}
        return InfluenceScorer(solved.s_test.detach(), names, self.top_k, info)

    def s_test(self, ctx: SelectionContext) -> SolveResult:
        """s_test = (H + damping I)^-1 grad l(R)."""
        params = select_parameters(ctx.model, self.params)
        reference = ctx.reference if self.reference == "given" else ctx.labeled
        if reference is None or len(reference) == 0:
            raise SelectionError(f"ISAL needs a non-empty reference set (reference={self.reference!r})")
        v = reference_gradient(ctx.model, ctx.adapter, ctx.loader(reference), params, ctx.device, ctx.progress)
        if isinstance(self.solver, Identity):
            return SolveResult(v, {"solver": Identity.name})
        op = HessianOperator(ctx.model, ctx.adapter, params, self._hessian_batches(ctx))
        solved = self.solver.solve(op, v)
        log.info("s_test: %s", {k: v for k, v in solved.info.items() if k != "norms"})
        return solved

    def _hessian_batches(self, ctx):
        labeled = ctx.labeled
        if labeled is None or len(labeled) == 0:
            raise SelectionError("ISAL needs a non-empty labeled set for the Hessian")
        if self.hessian_samples and len(labeled) > self.hessian_samples:
            pick = torch.randperm(len(labeled), generator=torch.Generator().manual_seed(self.seed))
            labeled = Subset(labeled, pick[: self.hessian_samples].tolist())
        return collect_batches(ctx.adapter, ctx.loader(labeled), ctx.device)


def GradientSimilarity(**kwargs) -> ISAL:
    """The paper's "Gradient Similarity" ablation: ISAL with H = I."""
    return ISAL(solver=Identity(), **kwargs)


#: Baselines by name; "isal" and "gradsim" (ISAL with H = I) take the influence settings.
BASELINES = {"random": Random, "entropy": Entropy, "margin": Margin, "least_confidence": LeastConfidence,
             "coreset": Coreset}
INFLUENCE_STRATEGIES = ("gradsim", "isal")
#: Batch-aware strategies (isal_core.batch_strategies): BADGE, and ISAL whose batch is spread by k-center.
BATCH_STRATEGIES = ("badge", "isal_batch")
STRATEGIES = tuple(BASELINES) + INFLUENCE_STRATEGIES + BATCH_STRATEGIES


def make_strategy(name: str, settings: InfluenceSettings | None = None, seed: int = 0,
                  reference: str = "given") -> Strategy:
    """A strategy by name; ISAL's solver and options come from `settings` (defaults when None)."""
    if name == "random":
        return Random(seed=seed)
    if name in BASELINES:
        return BASELINES[name]()
    if name in BATCH_STRATEGIES:
        from .batch_strategies import BADGE, BatchISAL

        return BADGE(seed=seed) if name == "badge" else BatchISAL(make_strategy("isal", settings, seed, reference))
    if name not in INFLUENCE_STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    settings = settings or InfluenceSettings()
    common = dict(params=settings.params, top_k=settings.top_k, reference=reference, seed=seed)
    if name == "gradsim":
        return GradientSimilarity(**common)
    return ISAL(solver=solver_from(settings, seed), hessian_samples=settings.hessian_samples or None, **common)
