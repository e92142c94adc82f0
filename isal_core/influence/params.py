"""Which parameters influence is taken over, and flat vectors over them.

The paper takes every weight with more than one dimension (conv and linear weights;
no BatchNorm, no biases). "last" keeps only the final linear layer's weight and bias,
which is cheap and often nearly as good. A list of names selects any set.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ModelError
from ..settings import PARAMETER_SETS

#: The final convolutions of an FCOS head, as torchvision and mmdet name them.
HEAD_LAYERS = ("cls_logits", "bbox_reg", "bbox_ctrness", "conv_cls", "conv_reg", "conv_centerness")


def select_parameters(model: nn.Module, which: str | Sequence[str] = "weights") -> list[tuple[str, nn.Parameter]]:
    """Named parameters for `which`: "weights" (ndim > 1), "last", "all", "head" (a detector's final
    convolutions: FCOS's class logits, box regression and centerness), or explicit names."""
    named = [(n, p) for n, p in model.named_parameters()]
    if isinstance(which, str) and which not in PARAMETER_SETS:
        which = [w.strip() for w in which.split(",") if w.strip()]
    if which == "weights":
        chosen = [(n, p) for n, p in named if p.ndim > 1]
    elif which == "all":
        chosen = named
    elif which == "head":
        chosen = [(n, p) for n, p in named if n.rsplit(".", 2)[-2:-1] and n.rsplit(".", 2)[-2] in HEAD_LAYERS]
        if not chosen:
            raise ModelError(f"parameter set 'head' needs a detector with final convolutions named {HEAD_LAYERS}")
    elif which == "last":
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ModelError("parameter set 'last' needs a model with an nn.Linear layer")
        prefix = linears[-1][0]
        own = (f"{prefix}weight", f"{prefix}bias")
        chosen = [(n, p) for n, p in named if n.rsplit(".", 1)[0] == prefix or n in own]
    else:
        index = dict(named)
        unknown = [w for w in which if w not in index]
        if unknown:
            raise ModelError(f"unknown parameter names {unknown}; the model has e.g. {list(index)[:8]}")
        chosen = [(n, index[n]) for n in which]
    if not chosen:
        raise ModelError(f"parameter set {which!r} selects no parameters of this model")
    return chosen


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of `vector` shaped like `like` (no copy)."""
    out, offset = [], 0
    for t in like:
        out.append(vector[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    if offset != vector.numel():
        raise ModelError(f"vector has {vector.numel()} entries, parameters have {offset}")
    return out
