"""Cluster ids for a project's predictions: k-means on the frozen embeddings, fitted once per
project and backbone (on the labeled and unlabeled tasks of the first job, in task order) and
kept, so every later version gives a task the same id (isal_core.serving)."""
from __future__ import annotations

from pathlib import Path

import torch

from isal_core.atomic import atomic_write
from isal_core.serving import assign, kmeans


def project_centroids(folder: Path, backbone: str, k: int, seed: int, labeled, pool, labeled_ids, pool_ids):
    """The project's saved centroids for this backbone, fitted now if there are none yet."""
    path = folder / f"clusters-{backbone}-k{k}-seed{seed}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    order = sorted(range(len(labeled_ids) + len(pool_ids)), key=lambda i: (list(labeled_ids) + list(pool_ids))[i])
    x = torch.cat([labeled.x, pool.x])[order]
    centroids = kmeans(x, k, seed)
    with atomic_write(path, "wb") as f:
        torch.save(centroids, f)
    return centroids


def cluster_ids(embeddings: torch.Tensor, centroids: torch.Tensor) -> list[int]:
    return assign(embeddings, centroids).tolist()
