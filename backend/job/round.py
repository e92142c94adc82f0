"""A job's second step: the engine's round on the project's tasks, in this process or as a torchrun group.

Train from scratch (seeded; with frozen features, a head on cached embeddings), s_test,
influence and prediction of every pool task in one pass (isal_core.Learner.round), the
model's metric on R, and with cluster serving each pool task's cluster: k-means on the
frozen embeddings, fitted once per project and backbone (on the labeled and unlabeled tasks
of the first job, in task order) and kept, so every later version gives a task the same id
(isal_core.selection.serving); without frozen features, the predicted class.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from isal_core.learner import Learner, RoundResult
from isal_core.selection.serving import assign, kmeans
from isal_core.utils.atomic import atomic_write

from ..settings import EngineSettings
from ..storage.layout import CENTROIDS_OF_PROJECT, GROUP_PREFIX
from ..storage.projects import ProjectDir
from ..tasktypes import TaskType
from .group import run_in_group
from .tasks import REFERENCE_FLAG, ProjectTasks


@dataclass
class RoundOutcome:
    """What the round gives the publication: the engine's result, the adapter that made it, the metric
    on R ({name, value, on}), (centroids or None, cluster per pool task) or None, and for the report
    the processes it ran on and what the embedding cache saved."""

    result: RoundResult
    adapter: object
    metric: dict
    clusters: tuple | None
    processes: int = 1
    embedding_cache: dict | None = None


def run_round(project: ProjectDir, task_type: TaskType, engine: EngineSettings, tasks: ProjectTasks,
              set_phase) -> RoundOutcome:
    adapter = task_type.adapter(engine)
    records = tasks.records
    group = None
    if engine.job_procs > 1:  # training, scoring and the metric as a torchrun group
        with tempfile.TemporaryDirectory(prefix=GROUP_PREFIX, dir=project.root) as job_dir:
            result, group = run_in_group(engine.job_procs, task_type, engine, records, Path(job_dir), set_phase)
    labeled, pool = adapter.dataset(records["labeled"]), adapter.dataset(records["pool"])
    reference = adapter.dataset(records["reference"])
    if group is None:
        learner = Learner(adapter, task_type.engine_settings(engine), engine.seed)
        result = learner.round(engine.strategy, labeled, pool, reference,
                               train_set=adapter.dataset(records["labeled"], train=True), on_phase=set_phase)
        value = learner.evaluate(result.model, reference)
        cache = adapter.cache.summary() if hasattr(adapter, "cache") else None
    else:
        value, cache = group["metric"], group["embedding_cache"]
    clusters = _clusters(project, engine, adapter, tasks, labeled, pool, result,
                         task_type.engine_settings(engine).cluster_source)
    optimistic = "" if tasks.reference_source == REFERENCE_FLAG else " (also trained on: optimistic)"
    metric = {"name": adapter.metric().name, "value": value, "on": tasks.reference_source + optimistic}
    return RoundOutcome(result, adapter, metric, clusters, engine.job_procs, cache)


def _clusters(project: ProjectDir, engine: EngineSettings, adapter, tasks: ProjectTasks, labeled, pool, result,
              source):
    """(centroids or None, cluster id per pool task) with cluster serving, else None. Without frozen
    features a task's cluster is its predicted class (no centroids)."""
    if source is None:
        return None
    if source == "predictions":
        return None, [adapter.cluster(p) for p in result.scores.predictions]
    k = engine.clusters or adapter.num_classes
    path = project.root / CENTROIDS_OF_PROJECT.format(backbone=adapter.backbone_id, k=k, seed=engine.seed)
    if path.is_file():
        centroids = torch.load(path, map_location="cpu", weights_only=True)
    else:  # the first job's tasks, in task id order
        ids = [i.task_id for i in tasks.labeled] + tasks.pool_ids
        order = sorted(range(len(ids)), key=ids.__getitem__)
        centroids = kmeans(torch.cat([labeled.x, pool.x])[order], k, engine.seed)
        with atomic_write(path, "wb") as f:
            torch.save(centroids, f)
    return centroids, assign(pool.x, centroids).tolist()
