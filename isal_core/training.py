"""Supervised training, prediction and checkpoints for the active-learning loop.

Every round of active learning retrains the classifier on the labeled set, so training
is seeded (shuffling, augmentation) to make rounds comparable and results reproducible.
The initial weights are drawn when the model is built: call seed_everything first.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .models import build_model, last_linear

CHECKPOINT_FORMAT = "isal_core.checkpoint/1"


@dataclass
class TrainConfig:
    """Training hyper-parameters; defaults are the ISAL paper's CIFAR schedule
    (SGD 0.1, momentum 0.9, wd 5e-4, 200 epochs, lr x0.1 at epoch 160)."""

    epochs: int = 200
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    milestones: tuple[float, ...] = (0.8,)  # fractions of `epochs` where lr *= gamma
    gamma: float = 0.1
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    deterministic: bool = True


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (CPU and CUDA); optionally ask torch for
    deterministic kernels (warn, not fail, where none exists)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None -> cuda when available, else cpu; asking for missing CUDA is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def milestone_epochs(config: TrainConfig) -> list[int]:
    """Epoch indices where the lr drops: fractions of config.epochs, rounded (0.8 of 200 -> 160)."""
    return sorted({max(1, round(f * config.epochs)) for f in config.milestones})


def build_optimizer(model: nn.Module, config: TrainConfig):
    """SGD + MultiStepLR stepped once per epoch, as in the paper."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestone_epochs(config), gamma=config.gamma)
    return optimizer, scheduler


def _check_labels(dataset) -> None:
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        bad = [i for i, y in enumerate(labels) if y is None or y < 0]
        if bad:
            raise ValueError(f"cannot train on unlabeled items: {len(bad)} item(s), e.g. index {bad[0]}")


def train_classifier(model: nn.Module, dataset, config: TrainConfig, progress: bool = True) -> nn.Module:
    """Train `model` in place on a dataset of (x, y, idx) items; returns it in eval mode.

    Raises ValueError for an empty dataset or unlabeled items (label < 0), and
    FloatingPointError as soon as the loss stops being finite (diverged lr, bad data).
    """
    if len(dataset) == 0:
        raise ValueError("cannot train on an empty dataset")
    _check_labels(dataset)
    seed_everything(config.seed, config.deterministic)
    device = resolve_device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    # BatchNorm cannot train on a batch of one; drop such a trailing batch (one random item per epoch).
    drop_last = len(dataset) > config.batch_size and len(dataset) % config.batch_size == 1
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=config.num_workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        persistent_workers=config.num_workers > 0,
    )
    model.to(device)
    optimizer, scheduler = build_optimizer(model, config)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, config.epochs + 1):
        model.train()
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=not progress)
        for step, (x, y, _) in enumerate(bar, start=1):
            y = torch.as_tensor(y)
            if (y < 0).any():
                raise ValueError(f"cannot train on unlabeled items (label < 0) at epoch {epoch} step {step}")
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is NaN/inf at epoch {epoch} step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        scheduler.step()
    return model.eval()


def _batches(model: nn.Module, dataset, device, batch_size: int):
    """Yield (logits, labels) on CPU in dataset order, with the model in eval mode."""
    device = resolve_device(device)
    model.to(device).eval()
    for x, y, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield model(x.to(device)).float().cpu(), torch.as_tensor(y)


@torch.no_grad()
def predict_logits(model: nn.Module, dataset, device="cpu", batch_size: int = 256) -> torch.Tensor:
    """Logits [N, C] for the whole dataset, in dataset order (model left in eval mode)."""
    chunks = [logits for logits, _ in _batches(model, dataset, device, batch_size)]
    if not chunks:
        return torch.empty(0, last_linear(model)[1].out_features)
    return torch.cat(chunks)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, device="cpu", batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1] over a labeled dataset."""
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    correct = total = 0
    for logits, y in _batches(model, dataset, device, batch_size):
        if (y < 0).any():
            raise ValueError("cannot evaluate on unlabeled items (label < 0)")
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    return correct / total


def save_checkpoint(path, model: nn.Module, meta: dict) -> None:
    """Write weights + metadata atomically (temp file + os.replace), so a crash or a
    concurrent reader (the ML backend) never sees a half-written checkpoint."""
    missing = [k for k in ("arch", "num_classes") if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta must include {missing}")
    try:
        meta = json.loads(json.dumps(meta))  # JSON-able only; also loadable with weights_only=True
    except TypeError as exc:
        raise ValueError(f"checkpoint meta must be JSON-serialisable: {exc}") from exc
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, "meta": meta, "state_dict": state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model named in the checkpoint's meta and load its weights (eval mode)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta, state = blob["meta"], blob["state_dict"]
        model = build_model(meta["arch"], int(meta["num_classes"]))
        model.load_state_dict(state)
    except Exception as exc:
        raise ValueError(f"cannot load checkpoint {path}: {exc}") from exc
    return model.to(resolve_device(device)).eval(), meta
