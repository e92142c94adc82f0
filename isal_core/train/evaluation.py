"""Running a model over a loader in eval mode, without gradients: one helper for every caller
(evaluation, the uncertainty and coreset baselines, predictions)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..tasks.base import TaskAdapter


@contextmanager
def eval_mode(model: nn.Module):
    """Eval mode for the duration; restores the previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def batches(model: nn.Module, adapter: TaskAdapter, loader: Iterable, device) -> Iterator[tuple[Any, Any, Tensor]]:
    """(inputs, targets, indices) on `device`, with the model in eval mode and no autograd."""
    device = torch.device(device)
    seen = 0
    with eval_mode(model), torch.no_grad():
        for batch in loader:
            inputs, targets = adapter.to_device(batch, device)
            n = len(batch[1])
            indices = batch[2] if len(batch) > 2 else torch.arange(seen, seen + n)
            seen += n
            yield inputs, targets, indices


def outputs(model: nn.Module, adapter: TaskAdapter, loader: Iterable, device) -> Iterator[tuple[Any, Any, Tensor]]:
    """(outputs, targets, indices) per batch: `batches` plus the forward pass and a NaN check."""
    for inputs, targets, indices in batches(model, adapter, loader, device):
        out = adapter.forward(model, inputs)
        adapter.check_finite(out, indices)
        yield out, targets, indices


def evaluate(model: nn.Module, adapter: TaskAdapter, loader: Iterable, device) -> float:
    """The adapter's metric over a labeled loader (e.g. top-1 accuracy in [0, 1])."""
    metric = adapter.metric()
    for out, targets, _ in outputs(model, adapter, loader, device):
        metric.update(out, adapter.check_targets(targets, "the evaluation set"))
    return metric.compute()


def predict(model: nn.Module, adapter: TaskAdapter, loader: Iterable, device) -> list:
    """The adapter's prediction for every sample, in loader order."""
    return [p for out, _, _ in outputs(model, adapter, loader, device) for p in adapter.predict(out)]
