"""The one thing a user writes to plug a task into the engine: a `TaskAdapter`.

The adapter is the only place that knows the task. Training, evaluation, s_test,
pool scoring, the baselines and the backend's predictions all go through it:

    build_model()                  a fresh, untrained model (the round fits it)
    dataset(records, train)        records -> a Dataset of (inputs, target, index) items
    forward(model, inputs)         whatever `loss`, `pseudo_targets` and `predict` consume
    loss(outputs, targets)         one loss per sample, shape [B]
    pseudo_targets(outputs, top_k) targets from the model's own outputs (UUIC)
    predict(outputs)               one JSON-able prediction per sample (the backend turns
                                   it into a Label Studio result)
    metric()                       an accumulator: update(outputs, targets), compute()
    probabilities, embed           optional: for the uncertainty and coreset baselines
    cluster(prediction)            optional: cluster serving without frozen features

Everything else (reference gradient, s_test, influence, ranking) is task-agnostic.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from .errors import ConfigError, DataError, ModelError, NonFiniteError


class Metric(ABC):
    """Accumulates one evaluation metric over batches (higher is better)."""

    name = "metric"

    @abstractmethod
    def update(self, outputs: Any, targets: Any) -> None: ...

    @abstractmethod
    def compute(self) -> float: ...


class TaskAdapter(ABC):
    """Model-and-task plug-in. Batches are `(inputs, targets, indices)` tuples."""

    #: DataLoader collate_fn for this task's items (None: PyTorch's default).
    collate_fn: Callable | None = None

    @abstractmethod
    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """Run the model; the result is what `loss`, `pseudo_targets` and `predict` consume."""

    @abstractmethod
    def loss(self, outputs: Any, targets: Any) -> Tensor:
        """Per-sample training loss, shape [B], no reduction over the batch."""

    @abstractmethod
    def pseudo_targets(self, outputs: Any, top_k: int = 1) -> Any:
        """Targets taken from the model's own (detached) outputs: the UUIC label."""

    def build_model(self) -> nn.Module:
        """A fresh, untrained model for this task (the round seeds, then calls this)."""
        raise NotImplementedError(f"{type(self).__name__} cannot build a model; pass one in")

    def dataset(self, records: Sequence, train: bool = False) -> Dataset:
        """A Dataset of (inputs, target, index) items from records (id, path, label)."""
        raise NotImplementedError(f"{type(self).__name__} builds no dataset from records")

    def predict(self, outputs: Any) -> list:
        """One JSON-able prediction per sample of the batch."""
        raise NotImplementedError(f"{type(self).__name__} has no predictions")

    def unscored(self, prediction: Any) -> bool:
        """True when influence cannot rank this sample (e.g. a detection image without a pseudo-box):
        it is then ranked after every scored sample, at random."""
        return False

    def cluster(self, prediction: Any) -> int:
        """The cluster id of one of `predict`'s predictions, for cluster serving without frozen
        features (an id that keeps its meaning across model versions, e.g. the predicted class)."""
        raise NotImplementedError(f"{type(self).__name__} has no clusters of predictions: cluster serving "
                                  "needs frozen features (weights) with this task")

    def metric(self) -> Metric:
        """A fresh evaluation metric."""
        raise NotImplementedError(f"{type(self).__name__} has no evaluation metric")

    def check_targets(self, targets: Any, what: str) -> Any:
        """Raise DataError when `targets` of `what` are not true labels; return them."""
        return targets

    def to_device(self, batch: Any, device: torch.device) -> tuple[Any, Any]:
        inputs, targets = batch[0], batch[1]
        return move(inputs, device), move(targets, device)

    def probabilities(self, outputs: Any) -> Tensor:
        """Class probabilities [B, C], for the uncertainty baselines."""
        raise NotImplementedError(f"{type(self).__name__} has no class probabilities")

    def confidence(self, outputs: Any) -> Tensor:
        """How sure the model is of each sample [B], for least-confidence sampling: the top class
        probability unless the task defines its own."""
        return self.probabilities(outputs).max(1).values

    def embed(self, model: nn.Module, inputs: Any) -> Tensor:
        """Feature vectors [B, D], for the coreset baseline."""
        raise NotImplementedError(f"{type(self).__name__} has no embedding")

    def to_meta(self) -> dict:
        """JSON-able description saved with checkpoints (enough to rebuild the model)."""
        return {"adapter": type(self).__name__}

    def check_finite(self, outputs: Any, indices: Tensor | None = None) -> None:
        """Raise NonFiniteError naming the samples whose outputs are NaN/inf."""
        if isinstance(outputs, Tensor) and not torch.isfinite(outputs).all():
            bad = (~torch.isfinite(outputs.reshape(len(outputs), -1))).any(1).nonzero().flatten()
            names = bad if indices is None else indices.cpu()[bad.cpu()]
            raise NonFiniteError(f"model output is NaN/inf for samples {names.tolist()[:20]}")


class Accuracy(Metric):
    """Top-1 accuracy in [0, 1]."""

    name = "accuracy"

    def __init__(self):
        self.correct = self.total = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.correct += int((outputs.argmax(1) == targets).sum())
        self.total += len(targets)

    def compute(self) -> float:
        if self.total == 0:
            raise DataError("cannot evaluate on an empty dataset")
        return self.correct / self.total


class ClassificationAdapter(TaskAdapter):
    """Any classifier returning logits [B, C], cross-entropy loss.

    Targets are class indices [B] or soft distributions [B, C]; pseudo-targets with
    top_k > 1 are the renormalised top-k probabilities (eq. 3 of the paper, weighting
    each class's gradient by its probability), so the expected gradient of a sample is
    one gradient of one soft-target loss. top_k = 1 is the argmax label. `arch`,
    `num_classes` and `image_size` are needed only to build the model and datasets;
    `weights` (isal_core.backbones) starts every model from pretrained weights, with
    their own preprocessing.
    """

    def __init__(self, arch: str | None = None, num_classes: int | None = None, image_size: int = 32,
                 weights: str | None = None):
        self.arch, self.num_classes, self.image_size, self.weights = arch, num_classes, image_size, weights
        self._pretrained = None
        self._size_checked = False

    @classmethod
    def from_meta(cls, meta: dict) -> ClassificationAdapter:
        return cls(meta["arch"], int(meta["num_classes"]), int(meta.get("image_size", 32)), meta.get("weights"))

    def to_meta(self) -> dict:
        return {"adapter": "classification", "arch": self.arch, "num_classes": self.num_classes,
                "image_size": self.image_size, "weights": self.weights}

    @property
    def pretrained(self):
        """The loaded weights (once per adapter), or None."""
        if self.weights is not None and self._pretrained is None:
            from .backbones import load_weights

            self._pretrained = load_weights(self.arch, self.weights, self.image_size)
        return self._pretrained

    def build_model(self) -> nn.Module:
        from .backbones import load_backbone
        from .models import build_model, last_linear

        if self.arch is None or not self.num_classes:
            raise ModelError("ClassificationAdapter needs arch and num_classes to build a model")
        model = build_model(self.arch, self.num_classes)
        if self.pretrained is not None:
            load_backbone(model, self.pretrained.state_dict, last_linear(model)[0], f"{self.weights!r}")
        if not self._size_checked:
            check_input_size(model, self.arch, self.input_size)
            self._size_checked = True
        return model

    @property
    def input_size(self) -> int:
        """The side of the images the model sees: the weights' crop size, else image_size."""
        return self.pretrained.preprocessing.size if self.pretrained is not None else self.image_size

    def transform(self, train: bool = False):
        from .transforms import classification_transform, pretrained_transform

        if self.pretrained is None:
            return classification_transform(self.image_size, train=train)
        return pretrained_transform(self.pretrained.preprocessing, train=train)

    def dataset(self, records, train=False):
        from .data import ImageDataset

        return ImageDataset(records, self.transform(train))

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

    def predict(self, outputs: Tensor) -> list[int]:
        return outputs.detach().argmax(1).tolist()

    def cluster(self, prediction: int) -> int:
        return int(prediction)

    def metric(self) -> Metric:
        return Accuracy()

    def check_targets(self, targets, what):
        if isinstance(targets, Tensor) and targets.dtype in (torch.int64, torch.int32) and (targets < 0).any():
            raise DataError(f"{what} holds unlabeled samples (label -1); it needs true labels")
        return targets

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


def move(x: Any, device: torch.device) -> Any:
    """Tensors (also inside lists, tuples and dicts) onto `device`."""
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(move(v, device) for v in x)
    if isinstance(x, dict):
        return {k: move(v, device) for k, v in x.items()}
    return x


PROBE_SIZES = (16, 32, 64, 75, 96, 128, 160, 224, 299)


def check_input_size(model: nn.Module, arch: str, size: int) -> None:
    """Refuse an input size the architecture cannot take (its pooling shrinks the image below one
    pixel) before any training, naming the smallest probed size that works."""
    def runs(side: int) -> bool:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, side, side))
            return True
        except RuntimeError:
            return False

    was_training = model.training
    model.eval()
    try:
        if runs(size):
            return
        fits = next((s for s in PROBE_SIZES if s > size and runs(s)), None)
    finally:
        model.train(was_training)
    hint = f"use image_size (ISAL_IMAGE_SIZE, --image-size) {fits} or more" if fits else "use a larger image_size"
    raise ConfigError(f"images of {size} x {size} px are too small for {arch}: its forward pass fails at that "
                      f"size; {hint}")
