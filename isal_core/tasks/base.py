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
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import NonFiniteError


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
    #: What an annotation review ranks: "sample" (the annotation as a whole) or "box" (detection).
    review_unit: str = "sample"
    #: Frozen features: the cache of the images' embeddings (datasets are embeddings, a cold start can order
    #: tasks before any label); None for a model that trains on the images.
    cache = None
    #: Whether the semi learner (one class per image spread over a kNN graph of the pool) applies to this task.
    learns_from_pool: bool = False

    @abstractmethod
    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """Run the model; the result is what `loss`, `pseudo_targets` and `predict` consume."""

    @abstractmethod
    def loss(self, outputs: Any, targets: Any) -> Tensor:
        """Per-sample training loss, shape [B], no reduction over the batch."""

    @abstractmethod
    def pseudo_targets(self, outputs: Any, top_k: int = 1) -> Any:
        """Targets taken from the model's own (detached) outputs: the UUIC label."""

    def prepare(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Fetch what the adapter needs before a round (pretrained weights), reporting a download's progress
        as progress(MB done, MB in all). Nothing by default."""

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

    def entropy(self, outputs: Any) -> Tensor:
        """The uncertainty of each sample [B], for entropy sampling: the entropy of the class probabilities
        unless the task defines its own (multi-label: the mean binary entropy of its tags)."""
        p = self.probabilities(outputs).float()
        return -(p * p.clamp_min(1e-12).log()).sum(1)

    def logit_residual(self, outputs: Any) -> Tensor:
        """d loss / d logits [B, C] at the model's own label, for BADGE's gradient embedding: softmax minus the
        one-hot argmax unless the task defines its own (multi-label: sigmoid minus the thresholded tags)."""
        p = self.probabilities(outputs).double()
        return p - torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).double()

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


def move(x: Any, device: torch.device) -> Any:
    """Tensors (also inside lists, tuples and dicts) onto `device`."""
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(move(v, device) for v in x)
    if isinstance(x, dict):
        return {k: move(v, device) for k, v in x.items()}
    return x
