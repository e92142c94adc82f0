"""Image classification: any classifier that returns logits, with cross-entropy (the paper's task).

`ClassificationAdapter` builds the model by name (isal_core.nets), the datasets from image
records (isal_core.data), and refuses an image size the architecture cannot take before
any training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError, ModelError
from .base import Metric, TaskAdapter


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
    `weights` (isal_core.nets.backbones) starts every model from pretrained weights, with
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
        """What rebuilds the model, and `weights_identity`: which exact weights (a name, or the file's hash)."""
        return {"adapter": "classification", "arch": self.arch, "num_classes": self.num_classes,
                "image_size": self.image_size, "weights": self.weights,
                "weights_identity": self.pretrained.identity if self.weights is not None else None}

    @property
    def pretrained(self):
        """The loaded weights (once per adapter), or None."""
        self.prepare()
        return self._pretrained

    def prepare(self, progress=None) -> None:
        """Load the pretrained weights once (downloaded into torchvision's cache the first time)."""
        if self.weights is not None and self._pretrained is None:
            from ..nets.backbones import load_weights

            self._pretrained = load_weights(self.arch, self.weights, self.image_size, progress)

    def build_model(self) -> nn.Module:
        from ..nets.backbones import load_backbone
        from ..nets.models import build_model, last_linear

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
        from ..data.transforms import classification_transform, pretrained_transform

        if self.pretrained is None:
            return classification_transform(self.image_size, train=train)
        return pretrained_transform(self.pretrained.preprocessing, train=train)

    def dataset(self, records, train=False):
        from ..data.images import ImageDataset

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
