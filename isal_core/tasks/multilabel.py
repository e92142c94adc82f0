"""Multi-label tagging on frozen features: a head with an independent sigmoid per tag, binary cross-entropy.

An image's label is the list of its tags (class indices; [] = no tag, a valid answer). UUIC takes the gradient of
the loss against the model's own label. Under the model's *whole* Bernoulli distribution that expectation is zero:
E_y[sigmoid(z) - y] = 0, the score identity, as for softmax over every class. So, as the paper's top-K (K = 1 best),
`pseudo_targets` is the mode (every tag with p >= 0.5) and with top_k = M > 1 the expectation over the M most
probable tag vectors, renormalised. Binary cross-entropy is linear in its target, so that expected gradient is one
gradient at their weighted mean: a closed form, checked against enumerating the vectors (tests/test_multilabel.py).
The M most probable vectors are the mode with the cheapest sets of tags flipped (flipping tag j costs |z_j| of
log-probability), found best-first. The metric is the mean over tags of average precision (mAP); micro F1 at 0.5
is kept beside it. The baselines read the task's own uncertainty: entropy is the mean binary entropy of the tags,
least confidence the mean probability of the model's own answers, BADGE's gradient embedding the features times
sigmoid minus the thresholded tags.
"""
from __future__ import annotations

import heapq
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError, ModelError
from ..settings import ModelSettings
from .base import Metric
from .frozen import DEFAULT_CACHE, EmbeddingCache, Embeddings, FrozenFeatureAdapter


def cheapest_flips(costs: list[float], m: int) -> list[tuple[float, tuple[int, ...]]]:
    """The m sets of indices with the smallest sums of `costs` (>= 0), cheapest first, the empty set first: each
    set extends the previous best by the next index, or swaps its last index for the next (every set once)."""
    order = sorted(range(len(costs)), key=costs.__getitem__)
    found: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    heap = [(costs[order[0]], (0,))] if order else []
    while heap and len(found) < m:
        total, picks = heapq.heappop(heap)
        found.append((total, tuple(order[p] for p in picks)))
        last = picks[-1]
        if last + 1 < len(order):
            heapq.heappush(heap, (total + costs[order[last + 1]], picks + (last + 1,)))
            heapq.heappush(heap, (total - costs[order[last]] + costs[order[last + 1]], picks[:-1] + (last + 1,)))
    return found


class MeanAveragePrecision(Metric):
    """Mean over tags of average precision (tags with no positive left out), and `micro_f1` at 0.5."""

    name = "mAP"

    def __init__(self):
        self.scores: list[Tensor] = []
        self.targets: list[Tensor] = []

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.scores.append(outputs.detach().float().cpu())
        self.targets.append(targets.detach().float().cpu())

    def compute(self) -> float:
        if not self.scores:
            raise DataError("cannot evaluate on an empty dataset")
        scores, targets = torch.cat(self.scores), torch.cat(self.targets)
        ap = [average_precision(scores[:, j], targets[:, j]) for j in range(targets.shape[1]) if targets[:, j].any()]
        if not ap:
            raise DataError("no tag is present in the evaluation set: average precision is undefined")
        predicted = scores >= 0  # p >= 0.5
        tp = float((predicted & (targets > 0)).sum())
        self.micro_f1 = 2 * tp / max(1.0, float(predicted.sum() + (targets > 0).sum()))
        return sum(ap) / len(ap)


def average_precision(scores: Tensor, positives: Tensor) -> float:
    """Precision averaged over the ranks of the positives, highest score first (ties in score order)."""
    hits = positives[scores.argsort(descending=True, stable=True)] > 0
    ranks = torch.arange(1, len(hits) + 1, dtype=torch.float64)
    precision = hits.double().cumsum(0) / ranks
    return float(precision[hits].mean())


class MultiLabelAdapter(FrozenFeatureAdapter):
    """A head on frozen embeddings with one sigmoid per tag (`num_classes` tags); see the module docstring. The
    semi learner spreads one class per image, so a multi-label head learns from its labels alone."""

    learns_from_pool = False
    review_unit = "tag"  # the review also names each annotation's likeliest wrong and missing tag

    def to_meta(self) -> dict:
        return {**super().to_meta(), "adapter": "multilabel"}

    def dataset(self, records, train=False) -> Embeddings:
        """The records' embeddings (the images embedded without their tag lists, which do not batch) and their
        multi-hot tags."""
        found = super().dataset([replace(r, label=None) for r in records], train)
        return Embeddings(found.x, [self.multi_hot(r.label) for r in records])

    def multi_hot(self, tags) -> Tensor:
        """[num_classes] of 0/1 (float64); an unlabeled image's is -1 everywhere."""
        if tags is None:
            return torch.full((self.num_classes,), -1.0, dtype=torch.float64)
        out = torch.zeros(self.num_classes, dtype=torch.float64)
        for t in tags:
            if not 0 <= int(t) < self.num_classes:
                raise DataError(f"tag {t} is not one of the {self.num_classes} tags")
            out[int(t)] = 1.0
        return out

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        targets = targets.to(outputs.dtype)
        return F.binary_cross_entropy_with_logits(outputs, targets, reduction="none").sum(1)

    def pseudo_targets(self, outputs: Tensor, top_k: int = 1) -> Tensor:
        logits = outputs.detach()
        mode = (logits >= 0).to(logits.dtype)
        if top_k <= 1:
            return mode
        out = torch.empty_like(mode)
        for i, z in enumerate(logits):
            flips = cheapest_flips(z.abs().tolist(), top_k)
            weights = torch.tensor([-c for c, _ in flips], dtype=logits.dtype).softmax(0)
            vectors = mode[i].repeat(len(flips), 1)
            for k, (_, flipped) in enumerate(flips):
                vectors[k, list(flipped)] = 1 - vectors[k, list(flipped)]
            out[i] = weights @ vectors
        return out

    def predict(self, outputs: Tensor) -> list[list[int]]:
        return [torch.nonzero(row >= 0).flatten().tolist() for row in outputs.detach()]

    def cluster(self, prediction: list[int]) -> int:
        return prediction[0] if prediction else -1

    def metric(self) -> Metric:
        return MeanAveragePrecision()

    def check_targets(self, targets, what):
        if isinstance(targets, Tensor) and (targets < 0).any():
            raise DataError(f"{what} holds unlabeled samples; it needs true tags")
        return targets

    def probabilities(self, outputs: Tensor) -> Tensor:
        return outputs.sigmoid()

    def confidence(self, outputs: Tensor) -> Tensor:
        """The mean over tags of the probability of the model's own answer (ticked or not)."""
        p = outputs.sigmoid()
        return torch.maximum(p, 1 - p).mean(1)

    def entropy(self, outputs: Tensor) -> Tensor:
        """The mean binary entropy of the tags."""
        p = outputs.sigmoid().clamp(1e-12, 1 - 1e-12)
        return -(p * p.log() + (1 - p) * (1 - p).log()).mean(1)

    def logit_residual(self, outputs: Tensor) -> Tensor:
        return outputs.sigmoid() - self.pseudo_targets(outputs)

    @staticmethod
    def tag_suspects(outputs: Tensor, targets: Tensor) -> list[dict]:
        """Per annotation, from a model's outputs (the review passes heads fit without it): the ticked tag the
        model believes least ("wrong": {"tag", "p"}) and the unticked tag it believes most ("missing"); None
        where the annotation ticks every tag or none."""
        p = outputs.sigmoid()
        found = []
        for row, ticked in zip(p, targets > 0):
            wrong = int(torch.where(ticked, row, torch.inf).argmin()) if ticked.any() else None
            missing = int(torch.where(ticked, -torch.inf, row).argmax()) if not ticked.all() else None
            found.append({k: None if j is None else {"tag": j, "p": round(float(row[j]), 4)}
                          for k, j in (("wrong", wrong), ("missing", missing))})
        return found


#: What ISAL_STRATEGY=auto (and `isal simulate`'s auto) is for tagging: chosen on the validation split of the mosaic
#: protocol (configs/tagging-validation.json, 20 to 200 labels and 100 to 1,000; docs/results.md "Multi-label
#: tagging"): least confidence (the mean probability of the model's own answers), served through clusters; with isal
#: the only strategy in the first three of both ranges, and the one that saves more over both.
AUTO_STRATEGY = "least_confidence"


def multilabel_adapter(settings: ModelSettings, num_tags: int, device="auto",
                       batch_size: int = 64) -> MultiLabelAdapter:
    """The adapter of a multi-label task: a head on frozen pretrained features (ModelError without weights)."""
    if not settings.frozen or settings.weights is None:
        raise ModelError("multi-label tagging trains a head on frozen pretrained features: keep the default "
                         "weights (ISAL_WEIGHTS) and ISAL_MODE auto or frozen")
    cache = EmbeddingCache(settings.embedding_cache or DEFAULT_CACHE)
    return MultiLabelAdapter(settings.arch, num_tags, settings.weights, cache, settings.head, settings.image_size,
                             device, batch_size)
