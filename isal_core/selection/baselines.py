"""The classic baselines: random order, and uncertainty (entropy, margin, least confidence)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import NonFiniteError
from ..train import evaluation
from .base import ScoreStrategy, SelectionContext


@dataclass
class Random(ScoreStrategy):
    """A fresh random order every round, the same one for the same (seed, round)."""

    seed: int = 0
    name = "random"

    def scores(self, ctx):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + ctx.round_number)
        return torch.rand(len(ctx.pool), generator=generator)


def _probabilities(ctx: SelectionContext) -> Tensor:
    out = torch.cat([ctx.adapter.probabilities(outputs).float().cpu()
                     for outputs, _, _ in evaluation.outputs(ctx.model, ctx.adapter, ctx.loader(ctx.pool), ctx.device)])
    if not torch.isfinite(out).all():
        raise NonFiniteError("model probabilities are NaN/inf")
    return out


class Entropy(ScoreStrategy):
    """Most uncertain first: the adapter's entropy (of the class probabilities; multi-label: mean binary)."""

    name = "entropy"

    def scores(self, ctx):
        out = torch.cat([ctx.adapter.entropy(outputs).float().cpu()
                         for outputs, _, _ in evaluation.outputs(ctx.model, ctx.adapter, ctx.loader(ctx.pool),
                                                                 ctx.device)])
        if not torch.isfinite(out).all():
            raise NonFiniteError("model probabilities are NaN/inf")
        return -out


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
