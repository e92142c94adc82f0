"""Pool scoring: influence(z) = -s_test . G_z for every pool sample, streamed.

G_z is the gradient of the loss against the model's own pseudo-label (the expected
gradient). We never form it: s_test . G_z is the derivative of the loss along s_test,
so one forward and one backward per batch give every sample's score.

Fast path (every selected parameter is a Conv2d/Linear weight or bias): each patched
layer adds eps_i * (its output's tangent along s_test) to its output, with eps a zero
vector of one entry per sample. d loss_i / d eps_i is then exactly s_test . G_i, and
one reverse pass over the batch returns all of them: three matmuls per layer, no
per-sample gradient, memory one batch of activations. Other parameters (BatchNorm,
custom layers) go through torch.func.jvp, which is exact for any differentiable model.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import NonFiniteError, SelectionError
from ..tasks.base import TaskAdapter
from ..train.evaluation import eval_mode
from ..utils.progress import track
from .params import flatten, unflatten

_FAST_MODULES = (nn.Conv2d, nn.Linear)


def influence(
    model: nn.Module,
    adapter: TaskAdapter,
    loader: Iterable,
    s_test: Tensor,
    params: Sequence[tuple[str, nn.Parameter]],
    top_k: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = False,
    num_samples: int | None = None,
    on_outputs: Callable[[Tensor, object], None] | None = None,
) -> Tensor:
    """I(z) = -s_test . G_z for every sample of `loader` (batches carry dataset indices).

    Returns a CPU float tensor indexed like the dataset; only this vector grows with the
    pool. `on_outputs(indices, outputs)` sees each batch's model outputs from the same
    forward pass (for predictions). Raises SelectionError on an empty pool and
    NonFiniteError on NaN outputs/scores.
    """
    device = torch.device(device)
    total = num_samples if num_samples is not None else _dataset_len(loader)
    scores = torch.full((total,), float("nan"), dtype=s_test.dtype) if total is not None else None
    chunks: list[tuple[Tensor, Tensor]] = []
    seen = 0
    with eval_mode(model), _scorer(model, adapter, params, s_test.to(device)) as scorer:
        for batch in track(loader, "scoring the pool (batches)", enabled=progress):
            inputs, _ = adapter.to_device(batch, device)
            indices = batch[2] if len(batch) > 2 else torch.arange(seen, seen + len(batch[1]))
            grads, outputs = scorer.score(inputs, top_k, indices)
            values = -grads
            if on_outputs is not None:
                on_outputs(indices, outputs)
            if not torch.isfinite(values).all():
                bad = indices[~torch.isfinite(values.cpu())].tolist()[:20]
                raise NonFiniteError(f"influence is NaN/inf for samples {bad}")
            if scores is not None:
                scores[indices] = values.detach().cpu()
            else:
                chunks.append((indices, values.detach().cpu()))
            seen += len(indices)
    if seen == 0:
        raise SelectionError("the pool is empty: there is nothing to score")
    if scores is None:
        idx = torch.cat([c[0] for c in chunks])
        scores = torch.full((int(idx.max()) + 1,), float("nan"), dtype=s_test.dtype)
        scores[idx] = torch.cat([c[1] for c in chunks])
    return scores


def influence_of_targets(model: nn.Module, adapter: TaskAdapter, loader: Iterable, s_test: Tensor,
                         params: Sequence[tuple[str, nn.Parameter]], targets_of: Callable,
                         device: torch.device | str = "cpu"):
    """For each batch of `loader`: (dataset indices, [S, B] -s_test . grad loss(z_i, targets_s[i]) for the S
    target sets `targets_of(outputs, the batch's own targets)` gives, the batch's outputs, its targets). One
    forward per batch, whatever S: e.g. an image's annotation with each of its boxes left out in turn
    (isal_core.influence.review)."""
    device = torch.device(device)
    with eval_mode(model), _scorer(model, adapter, params, s_test.to(device)) as scorer:
        for batch in loader:
            inputs, given = adapter.to_device(batch, device)
            grads, outputs = scorer.derivatives(inputs, lambda out: targets_of(out, given), batch[2])
            values = -grads
            if not torch.isfinite(values).all():
                raise NonFiniteError(f"influence is NaN/inf for samples {batch[2].tolist()[:20]}")
            yield batch[2], values.detach().cpu(), outputs, given


def layerwise_supported(model: nn.Module, params: Sequence[tuple[str, nn.Parameter]]) -> bool:
    owners = _owners(model)
    return all(isinstance(owners[id(p)][0], _FAST_MODULES) and owners[id(p)][1] in ("weight", "bias")
               for _, p in params)


def _owners(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    return {id(p): (m, n) for m in model.modules() for n, p in m.named_parameters(recurse=False)}


@contextmanager
def _frozen(model: nn.Module):
    """No parameter requires grad: the backward pass then skips every weight gradient."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _scorer(model: nn.Module, adapter: TaskAdapter, params, s_test: Tensor) -> _Scorer:
    """The eps trick where every parameter is a Conv2d / Linear weight or bias, else forward-mode jvp."""
    return (_LayerwiseScorer if layerwise_supported(model, params) else _JvpScorer)(model, adapter, params, s_test)


class _Scorer:
    """s_test . grad loss of a batch's samples (each scorer's `derivatives`), entered around a pass over a pool."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def score(self, inputs, top_k: int, indices: Tensor) -> tuple[Tensor, object]:
        """(s_test . G_i for each sample of the batch, the batch's outputs)."""
        grads, outputs = self.derivatives(inputs, lambda out: [self.adapter.pseudo_targets(out, top_k)], indices)
        return grads[0], outputs


class _LayerwiseScorer(_Scorer):
    """The eps trick on Conv2d / Linear layers (see the module docstring)."""

    def __init__(self, model, adapter, params, s_test):
        self.model, self.adapter = model, adapter
        owners = _owners(model)
        directions: dict[nn.Module, dict[str, Tensor]] = {}
        for (_, p), s in zip(params, unflatten(s_test, [p for _, p in params])):
            module, kind = owners[id(p)]
            directions.setdefault(module, {})[kind] = s.detach()
        self.directions = directions
        self.dtype = s_test.dtype  # float64 heads keep float64 scores
        self.eps: Tensor | None = None

    def __enter__(self):
        self._stack = _frozen(self.model)
        self._stack.__enter__()
        self.handles = [m.register_forward_hook(self._hook) for m in self.directions]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self._stack.__exit__(*exc)

    def _hook(self, module, args, output):
        direction = self.directions[module]
        x = args[0].detach()
        w = direction.get("weight")
        b = direction.get("bias")
        with torch.no_grad():
            if isinstance(module, nn.Conv2d):
                if w is None:
                    tangent = b.view(1, -1, 1, 1).expand_as(output)
                else:
                    tangent = module._conv_forward(x, w, b)
            else:
                tangent = F.linear(x, w, b) if w is not None else b.expand_as(output)
        return output + self.eps.view(-1, *([1] * (output.ndim - 1))) * tangent

    def derivatives(self, inputs, targets_of, indices: Tensor) -> tuple[Tensor, object]:
        """([S, B] s_test . grad loss(z_i, targets_s[i]) for each of the S target sets `targets_of(outputs)`
        gives, the batch's outputs): one forward; the backward of each set reaches only eps."""
        batch = _batch_size(inputs)
        self.eps = torch.zeros(batch, device=_device(inputs), dtype=self.dtype, requires_grad=True)
        with torch.enable_grad():
            outputs = self.adapter.forward(self.model, inputs)
            self.adapter.check_finite(outputs, indices)
            sets = targets_of(outputs)
            grads = [torch.autograd.grad(self.adapter.loss(outputs, targets).sum(), self.eps,
                                         retain_graph=s < len(sets) - 1)[0] for s, targets in enumerate(sets)]
        self.eps = None
        return torch.stack(grads), _detach(outputs)


class _AdapterModule(nn.Module):
    """Wraps adapter.forward so torch.func.functional_call can swap the model's weights."""

    def __init__(self, adapter, model):
        super().__init__()
        self.adapter, self.model = adapter, model

    def forward(self, inputs):
        return self.adapter.forward(self.model, inputs)


class _JvpScorer(_Scorer):
    """Forward-mode derivative of each sample's pseudo-label loss along s_test (any model)."""

    def __init__(self, model, adapter, params, s_test):
        self.adapter = adapter
        self.wrapper = _AdapterModule(adapter, model)
        self.names = [f"model.{n}" for n, _ in params]
        self.primals = tuple(p.detach() for _, p in params)
        self.tangents = tuple(t.detach() for t in unflatten(s_test, self.primals))

    def derivatives(self, inputs, targets_of, indices: Tensor) -> tuple[Tensor, object]:
        """As _LayerwiseScorer.derivatives, by one jvp over all S target sets."""
        with torch.no_grad():
            outputs = self.adapter.forward(self.wrapper.model, inputs)
        self.adapter.check_finite(outputs, indices)
        sets = targets_of(outputs)

        def losses(*weights):
            out = torch.func.functional_call(self.wrapper, dict(zip(self.names, weights)), (inputs,))
            return torch.stack([self.adapter.loss(out, targets) for targets in sets])

        _, tangent = torch.func.jvp(losses, self.primals, self.tangents)
        return tangent, outputs


def influence_loop(
    model: nn.Module,
    adapter: TaskAdapter,
    dataset,
    s_test: Tensor,
    params: Sequence[tuple[str, nn.Parameter]],
    top_k: int = 1,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The reference code's way, one sample at a time: forward, backward, flatten, dot.

    Slow on purpose; it is the definition the fast paths are checked and timed against.
    """
    device = torch.device(device)
    tensors = [p for _, p in params]
    s_test = s_test.to(device)
    out = torch.empty(len(dataset), dtype=s_test.dtype)
    with eval_mode(model):
        for i in range(len(dataset)):
            item = dataset[i]
            batch = adapter.collate_fn([item]) if adapter.collate_fn is not None else \
                (_unsqueeze(item[0]), _unsqueeze(torch.as_tensor(item[1])))
            inputs, _ = adapter.to_device(batch, device)
            outputs = adapter.forward(model, inputs)
            targets = adapter.pseudo_targets(outputs, top_k)
            loss = adapter.loss(outputs, targets).sum()
            grad = flatten(torch.autograd.grad(loss, tensors))
            out[i] = -grad.dot(s_test).item()
    return out


def expected_gradient(model, adapter, inputs, params, top_k: int = 1) -> Tensor:
    """G_z of one sample as a flat vector (for checks and small models)."""
    with eval_mode(model):
        outputs = adapter.forward(model, inputs)
        targets = adapter.pseudo_targets(outputs, top_k)
        loss = adapter.loss(outputs, targets).sum()
        return flatten(torch.autograd.grad(loss, [p for _, p in params]))


def _detach(x):
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)):
        return type(x)(_detach(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


def _unsqueeze(x):
    return x.unsqueeze(0) if isinstance(x, Tensor) else [x]


def _batch_size(inputs) -> int:
    return inputs.shape[0] if isinstance(inputs, Tensor) else len(inputs)


def _device(inputs) -> torch.device:
    return inputs.device if isinstance(inputs, Tensor) else inputs[0].device


def _dataset_len(loader) -> int | None:
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None
