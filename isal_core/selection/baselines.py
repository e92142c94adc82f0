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


def _over_pool(ctx: SelectionContext, measure, what: str) -> Tensor:
    """`measure(outputs)` of every pool sample, in pool order; NonFiniteError naming `what` if one is NaN/inf."""
    out = torch.cat([measure(outputs).float().cpu()
                     for outputs, _, _ in evaluation.outputs(ctx.model, ctx.adapter, ctx.loader(ctx.pool), ctx.device)])
    if not torch.isfinite(out).all():
        raise NonFiniteError(f"model {what} are NaN/inf")
    return out


class Entropy(ScoreStrategy):
    """Most uncertain first: the adapter's entropy (of the class probabilities; multi-label: mean binary)."""

    name = "entropy"

    def scores(self, ctx):
        return -_over_pool(ctx, ctx.adapter.entropy, "probabilities")


class Margin(ScoreStrategy):
    name = "margin"

    def scores(self, ctx):
        top2 = _over_pool(ctx, ctx.adapter.probabilities, "probabilities").topk(2, dim=1).values
        return top2[:, 0] - top2[:, 1]


class LeastConfidence(ScoreStrategy):
    """Lowest confidence first: the top class probability, or the adapter's own confidence (detection:
    the mean max-class score of an image's boxes)."""

    name = "least_confidence"

    def scores(self, ctx):
        return _over_pool(ctx, ctx.adapter.confidence, "confidences")
