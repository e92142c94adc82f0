"""Model checkpoints: weights plus the adapter's description, written atomically.

A crash or a concurrent reader (the ML backend) never sees a half-written file; the
meta is JSON only, so checkpoints load with `weights_only=True`.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..errors import ModelError
from ..tasks.base import TaskAdapter
from ..tasks.classification import ClassificationAdapter
from ..utils.atomic import atomic_write
from ..utils.runtime import resolve_device

CHECKPOINT_FORMAT = "isal_core.checkpoint/1"


def save_checkpoint(path, model: nn.Module, meta: dict) -> None:
    """Weights + JSON meta (for classification: arch and num_classes, so it can be rebuilt)."""
    try:
        meta = json.loads(json.dumps(meta))
    except TypeError as exc:
        raise ModelError(f"checkpoint meta must be JSON-serialisable: {exc}") from exc
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_write(path, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, "meta": meta, "state_dict": state}, f)


def read_checkpoint(path) -> tuple[dict, dict]:
    """(state_dict, meta) of a checkpoint file; ModelError if it is missing or unreadable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob["state_dict"], blob["meta"]
    except Exception as exc:
        raise ModelError(f"cannot load checkpoint {path}: {exc}") from exc


def load_checkpoint(path, device="cpu", adapter: TaskAdapter | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model (with `adapter`, else the classifier its meta names), load its weights, eval mode."""
    state, meta = read_checkpoint(path)
    try:
        model = (adapter or ClassificationAdapter.from_meta(meta)).build_model()
        model.load_state_dict(state)
    except Exception as exc:
        raise ModelError(f"cannot load checkpoint {path}: {exc}") from exc
    return model.to(resolve_device(device)).eval(), meta
