"""What ISAL's `prepare` returns: s_test and what it was taken over, ready to score any pool.

s_test = (H + damping I)^-1 grad l(R) is computed once per round; every sample, now or
later (a task imported after the job), then costs one forward and one backward pass.
The state (s_test, parameter names, top-k) is saved with a model version and loaded
again, so samples scored later land on the same scale as the round's pool.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ModelError
from ..tasks.base import TaskAdapter
from ..utils import distributed
from ..utils.atomic import atomic_write
from ..utils.distributed import Shard
from .params import select_parameters
from .pool import influence

SCORER_FORMAT = "isal_core.scorer/1"


@dataclass
class PoolScores:
    """Per pool sample, in dataset order: influence I(z) (lower = label sooner) and the
    adapter's prediction from the same forward pass."""

    influence: Tensor
    predictions: list = field(default_factory=list)


@dataclass
class InfluenceScorer:
    """I(z) = -s_test . G_z over the named parameters, with top-k pseudo-labels."""

    s_test: Tensor
    params: list[str]  # the names of the parameters s_test is over
    top_k: int = 1
    info: dict = field(default_factory=dict)

    def score(self, model: nn.Module, adapter: TaskAdapter, dataset: Dataset, device="cpu", batch_size: int = 64,
              workers: int = 0, progress: bool = False) -> PoolScores:
        """Influence and predictions of every sample of `dataset` in one pass over it."""
        params = select_parameters(model, self.params)
        if sum(p.numel() for _, p in params) != self.s_test.numel():
            raise ModelError(f"s_test has {self.s_test.numel()} entries but the model's parameters {self.params[:3]}"
                             f"... have {sum(p.numel() for _, p in params)}: it belongs to another model")
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                            collate_fn=adapter.collate_fn)
        predictions: dict[int, object] = {}

        def keep(indices, outputs):
            predictions.update(zip(indices.tolist(), adapter.predict(outputs)))

        values = influence(model, adapter, loader, self.s_test.to(device), params, self.top_k, device, progress,
                           num_samples=len(dataset), on_outputs=keep)
        return PoolScores(values, [predictions[i] for i in range(len(dataset))])

    def save(self, path: str | Path) -> None:
        with atomic_write(path, "wb") as f:
            torch.save({"format": SCORER_FORMAT, "s_test": self.s_test.detach().cpu(), "params": self.params,
                        "top_k": self.top_k, "info": self.info}, f)

    @classmethod
    def load(cls, path: str | Path, top_k: int | None = None) -> InfluenceScorer:
        """A saved scorer; ModelError for a file of another format (an older backend's: retrain to replace it)."""
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"cannot load the scorer {path}: {type(exc).__name__}: {exc}") from None
        if not isinstance(blob, dict) or blob.get("format") != SCORER_FORMAT:
            raise ModelError(f"the scorer {path} is not of the format {SCORER_FORMAT} (an older backend wrote it): "
                             "retrain the project (Start training) to replace it")
        return cls(blob["s_test"], list(blob["params"]), int(blob.get("top_k", top_k or 1)), dict(blob["info"]))


def score_sharded(score, pool: Dataset) -> PoolScores | None:
    """`score(dataset) -> PoolScores` over this rank's shard; the whole pool's scores on rank 0, None elsewhere."""
    rank, size = distributed.rank_and_size()
    if size == 1:
        return score(pool)
    indices = list(range(rank, len(pool), size))
    local = score(Shard(pool, indices)) if indices else PoolScores(torch.zeros(0), [])
    parts = [None] * size if rank == 0 else None
    dist.gather_object((indices, local.influence.cpu(), local.predictions), parts, dst=0)
    if rank != 0:
        return None
    influence = torch.empty(len(pool), dtype=local.influence.dtype)
    predictions: list = [None] * len(pool)
    for idx, values, preds in parts:
        influence[idx] = values.to(influence.dtype)
        for i, p in zip(idx, preds):
            predictions[i] = p
    return PoolScores(influence, predictions)
