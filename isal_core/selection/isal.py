"""ISAL: influence on the reference loss, I(z) = -grad l(R)^T (H + damping I)^-1 G_z, and its variants.

`ISAL` prepares s_test (isal_core.influence) and scores the pool with it; `GradientSimilarity`
is the paper's H = I ablation; `BatchISAL` spreads a round's batch: influence ranks each
sample alone, so a round's top `budget` can crowd one region (the picks of a plain ISAL
round are class-imbalanced), and BatchISAL takes the top `factor x budget` candidates and
picks the batch among them by k-center greedy on the features, nearest labeled sample first.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Subset

from ..errors import SelectionError
from ..influence.gradients import HessianOperator, collect_batches, reference_gradient
from ..influence.params import select_parameters
from ..influence.scorer import InfluenceScorer, PoolScores
from ..influence.stest import CG, Identity, SolveResult
from .base import Ranking, ScoreStrategy, SelectionContext, Strategy, features, influence_ranking, then_the_rest
from .diversity import k_center_greedy

log = logging.getLogger(__name__)


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


@dataclass
class BatchISAL(Strategy):
    """The top `factor x budget` by influence, then k-center greedy among them on the features."""

    isal: ISAL = field(default_factory=ISAL)
    factor: int = 5
    name = "isal_batch"

    def _rank(self, ctx):
        return self.rank_by(ctx, self.isal._rank(ctx))

    def rank_by(self, ctx: SelectionContext, influence: Ranking) -> Ranking:
        """The batch among the top candidates of an influence ranking (computed once, e.g. with a saved scorer).
        Unscored samples (a detection image with no pseudo-box: infinite in the ranking's scores) are never
        candidates; the rest of the pool keeps the ranking's order, so they come after every scored one."""
        order, n = influence.order, len(influence.order)
        budget = n if ctx.budget is None else min(ctx.budget, n)
        scored = order[torch.isfinite(influence.scores.double()[order])]
        candidates = (scored if len(scored) else order)[: self.factor * budget]
        pool = features(ctx, Subset(ctx.pool, candidates.tolist())).double()
        labeled = features(ctx, ctx.labeled).double() if ctx.labeled is not None and len(ctx.labeled) > 0 else None
        picked = [int(candidates[k]) for k in k_center_greedy(pool, labeled, budget)[0]]  # none labeled: the best first
        place = torch.empty(n, dtype=torch.float64)
        place[order] = torch.arange(n, dtype=torch.float64)
        return then_the_rest(picked, place)
