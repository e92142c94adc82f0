"""torchrun's primitives for the engine: join the group, who am I, broadcast, shard.

    torchrun --nproc-per-node 2 -m isal_core.cli select --checkpoint model.pt --labeled L --pool P ...

Training runs as DDP (isal_core.train.loop), rank 0 solves s_test and broadcasts the scorer
(`broadcast_object`), and the pool's scoring is sharded (isal_core.influence.scorer.score_sharded):
rank r scores pool samples r, r + N, r + 2N, ..., rank 0 gathers them. gloo on CPU, nccl on GPU
(each rank on cuda:LOCAL_RANK). Outside torchrun (no WORLD_SIZE, or 1) everything is one
process and nothing here communicates.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

log = logging.getLogger(__name__)


def init_from_env(device: str = "auto") -> bool:
    """Join the torchrun group the environment describes; False when there is none (one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_initialized():
        return True
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    log.info("rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return True


def finish() -> None:
    """Leave the group together: a rank that exits with its gloo group alive can abort at exit
    ("terminate called without an active exception") while the others still work."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_and_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def device_of_rank(device: str) -> str:
    """This rank's device: cuda:LOCAL_RANK under torchrun on a GPU machine, else `device` unchanged."""
    if dist.is_initialized() and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return device


def all_finite(value: torch.Tensor) -> torch.Tensor:
    """A tensor that is finite on every rank iff `value` is finite on all of them (so all raise together)."""
    flag = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=value.device)
    dist.all_reduce(flag)
    return torch.tensor(0.0) if flag.item() == 0 else torch.tensor(float("nan"))


class Shard(Dataset):
    """Samples `indices` of a dataset, re-indexed 0..n-1 (items are (x, y, index), the engine's convention)."""

    def __init__(self, dataset: Dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j):
        x, y, _ = self.dataset[self.indices[j]]
        return x, y, j


def broadcast_model(model: torch.nn.Module, device) -> torch.nn.Module:
    """Rank 0's weights (parameters and buffers) on every rank's copy of the same architecture."""
    if rank_and_size()[1] == 1:
        return model
    box = [{k: v.detach().cpu() for k, v in model.state_dict().items()} if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    model.load_state_dict(box[0])
    return model.to(device).eval()  # as training leaves it


def broadcast_object(obj):
    """Rank 0's (picklable) object on every rank, e.g. the scorer: s_test is computed once."""
    if rank_and_size()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
