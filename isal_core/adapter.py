"""The one thing a user writes to plug a model into the engine.

A task adapter says how to run the model on a batch, how to score its outputs
against targets (one loss per sample), and how to turn the model's own outputs
into pseudo-targets (UUIC). Everything else (reference gradient, s_test, pool
scoring, baselines) is task-agnostic and works through this interface.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NonFiniteError(FloatingPointError):
    """The model produced NaN/inf where a number was needed; the message names where."""


class TaskAdapter(ABC):
    """Model-and-loss plug-in. Batches are `(inputs, targets, indices)` tuples."""

    @abstractmethod
    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """Run the model; the result is what `loss` and `pseudo_targets` consume."""

    @abstractmethod
    def loss(self, outputs: Any, targets: Any) -> Tensor:
        """Per-sample training loss, shape [B], no reduction over the batch."""

    @abstractmethod
    def pseudo_targets(self, outputs: Any, top_k: int = 1) -> Any:
        """Targets taken from the model's own (detached) outputs: the UUIC label."""

    def to_device(self, batch: Any, device: torch.device) -> tuple[Any, Any]:
        inputs, targets = batch[0], batch[1]
        return _move(inputs, device), _move(targets, device)

    def probabilities(self, outputs: Any) -> Tensor:
        """Class probabilities [B, C], for the uncertainty baselines."""
        raise NotImplementedError(f"{type(self).__name__} has no class probabilities")

    def embed(self, model: nn.Module, inputs: Any) -> Tensor:
        """Feature vectors [B, D], for the coreset baseline."""
        raise NotImplementedError(f"{type(self).__name__} has no embedding")

    def check_finite(self, outputs: Any, indices: Tensor | None = None) -> None:
        """Raise NonFiniteError naming the samples whose outputs are NaN/inf."""
        if isinstance(outputs, Tensor) and not torch.isfinite(outputs).all():
            bad = (~torch.isfinite(outputs.reshape(len(outputs), -1))).any(1).nonzero().flatten()
            names = bad if indices is None else indices.cpu()[bad.cpu()]
            raise NonFiniteError(f"model output is NaN/inf for samples {names.tolist()[:20]}")


class ClassificationAdapter(TaskAdapter):
    """Any classifier returning logits [B, C], cross-entropy loss.

    Targets are class indices [B] or soft distributions [B, C]; pseudo-targets with
    top_k > 1 are the renormalised top-k probabilities (eq. 3 of the paper, weighting
    each class's gradient by its probability), so the expected gradient of a sample is
    one gradient of one soft-target loss. top_k = 1 is the argmax label.
    """

    def forward(self, model: nn.Module, inputs: Tensor) -> Tensor:
        return model(inputs)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")

    def pseudo_targets(self, outputs: Tensor, top_k: int = 1) -> Tensor:
        logits = outputs.detach()
        if top_k <= 1:
            return logits.argmax(1)
        probs = logits.softmax(1)
        top_p, top_i = probs.topk(min(top_k, probs.shape[1]), dim=1)
        soft = torch.zeros_like(probs).scatter_(1, top_i, top_p)
        return soft / soft.sum(1, keepdim=True)

    def probabilities(self, outputs: Tensor) -> Tensor:
        return outputs.softmax(1)

    def embed(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """Input of the final linear layer: the penultimate features."""
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        captured: list[Tensor] = []
        handle = head.register_forward_hook(lambda m, args, out: captured.append(args[0].detach()))
        try:
            model(inputs)
        finally:
            handle.remove()
        return captured[0].flatten(1)


def _move(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_move(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _move(v, device) for k, v in x.items()}
    return x
