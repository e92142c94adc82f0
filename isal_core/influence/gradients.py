"""Gradients the influence formula needs: grad l(R) and Hessian-vector products.

Both are taken with the model in eval mode (BatchNorm uses running statistics), as in
the reference code, so every sample's loss depends on that sample alone.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..errors import NonFiniteError, SelectionError
from ..tasks.base import TaskAdapter
from ..train.evaluation import eval_mode
from ..utils.progress import track
from .params import flatten, unflatten


def reference_gradient(
    model: nn.Module,
    adapter: TaskAdapter,
    loader: Iterable,
    params: Sequence[tuple[str, nn.Parameter]],
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Tensor:
    """grad_theta of the SUM of per-sample losses over the reference set R, flattened.

    A sum, not a mean, as in the reference code; the ranking does not depend on it.
    """
    device = torch.device(device)
    tensors = [p for _, p in params]
    total = torch.zeros(sum(p.numel() for p in tensors), device=device, dtype=tensors[0].dtype)
    seen = 0
    with eval_mode(model):
        for batch in track(loader, "reference gradient (batches)", enabled=progress):
            inputs, targets = adapter.to_device(batch, device)
            targets = adapter.check_targets(targets, "the reference set")
            outputs = adapter.forward(model, inputs)
            adapter.check_finite(outputs, batch[2] if len(batch) > 2 else None)
            loss = adapter.loss(outputs, targets).sum()
            if not torch.isfinite(loss):
                raise NonFiniteError("reference loss is NaN/inf")
            total += flatten(torch.autograd.grad(loss, tensors))
            seen += len(batch[1])
    if seen == 0:
        raise SelectionError("the reference set is empty: influence needs at least one labeled reference sample")
    return total


class HessianOperator:
    """v -> H v for the mean training loss over given labeled batches (double backprop).

    `batches` is a list of (inputs, targets) already on the device; `hvp(v)` averages
    over all of them (the exact Hessian of that set), `hvp(v, batch)` uses one batch
    (the stochastic estimate LiSSA needs).
    """

    def __init__(self, model: nn.Module, adapter: TaskAdapter, params: Sequence[tuple[str, nn.Parameter]],
                 batches: list):
        if not batches:
            raise SelectionError("the labeled set is empty: the Hessian needs at least one labeled sample")
        self.model, self.adapter = model, adapter
        self.tensors = [p for _, p in params]
        self.batches = [(i, adapter.check_targets(t, "the labeled set")) for i, t in batches]
        self.num_samples = sum(_batch_len(t) for _, t in self.batches)
        self.dim = sum(p.numel() for p in self.tensors)

    def hvp(self, v: Tensor, batch=None) -> Tensor:
        """H v, with H the Hessian of the mean loss over `batch` (default: all batches)."""
        parts = unflatten(v, self.tensors)
        batches = self.batches if batch is None else [batch]
        n = sum(_batch_len(t) for _, t in batches)
        out = torch.zeros_like(v)
        with eval_mode(self.model):
            for inputs, targets in batches:
                loss = self.adapter.loss(self.adapter.forward(self.model, inputs), targets).sum() / n
                grads = torch.autograd.grad(loss, self.tensors, create_graph=True)
                dot = sum((g * p).sum() for g, p in zip(grads, parts))
                out += flatten(torch.autograd.grad(dot, self.tensors))
        if not torch.isfinite(out).all():
            raise NonFiniteError("Hessian-vector product is NaN/inf: the training loss is not finite at these weights")
        return out

    def dense(self) -> Tensor:
        """The full Hessian (dim x dim), for checks on small models only."""
        eye = torch.eye(self.dim, device=self.tensors[0].device, dtype=self.tensors[0].dtype)
        return torch.stack([self.hvp(e) for e in eye])


def _batch_len(targets) -> int:
    return len(targets)


def collect_batches(adapter: TaskAdapter, loader: Iterable, device: torch.device | str,
                    limit: int | None = None) -> list:
    """Materialise up to `limit` samples of a loader as device batches (for the Hessian)."""
    out, n = [], 0
    for batch in loader:
        inputs, targets = adapter.to_device(batch, torch.device(device))
        out.append((inputs, targets))
        n += _batch_len(targets)
        if limit is not None and n >= limit:
            break
    return out
