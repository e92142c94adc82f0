"""A job's second step: the engine's round on the project's tasks, in this process or as a torchrun group.

Train from scratch (seeded; with frozen features, a head on cached embeddings), s_test,
influence and prediction of every pool task in one pass (isal_core.Learner.round), the
model's metric on R, and with cluster serving each pool task's cluster: k-means on the
frozen embeddings, fitted once per project and backbone (on the labeled and unlabeled tasks
of the first job, in task order) and kept, so every later version gives a task the same id
(isal_core.selection.serving); without frozen features, the predicted class. The result is the
order the pool is to be served in: the strategy's ranking, spread over the clusters (the
best task of the least-labeled cluster, one after another) when cluster serving is on.

With too few labels for a model (a cold start), the order comes from the frozen embeddings
alone: TypiClust (isal_core.selection.coldstart), typical and diverse tasks first.

Last, the review of what is labeled (ISAL_REVIEW): every labeled task outside R scored by the
influence on R of its annotated label and the model's loss on it (isal_core.influence.review),
ranked by ISAL_REVIEW_SIGNAL; detection per box as well (isal_core.influence.review.box_review), an
image ordered by its most suspicious box. The publication writes on each a prediction whose result is the
model's own label and whose score is its place in the review, most suspicious lowest (the
Data Manager tab "ISAL: annotations to review"); `GET /review` reads the version's review.npz.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from isal_core.influence.review import box_review, review, review_order
from isal_core.influence.scorer import PoolScores
from isal_core.learner import Learner, RoundResult
from isal_core.selection import Ranking, resolve_strategy, serves_clusters
from isal_core.selection.coldstart import typiclust_order
from isal_core.selection.serving import assign, kmeans, served_order
from isal_core.utils.atomic import atomic_write

from ..errors import JobError
from ..labelstudio.score_encoding import place_scores
from ..settings import EngineSettings
from ..storage.layout import CENTROIDS_OF_PROJECT, GROUP_PREFIX
from ..storage.projects import ProjectDir
from ..tasktypes import TaskType
from .group import run_in_group
from .hygiene import HygieneReport, check
from .tasks import REFERENCE_FLAG, ProjectTasks


@dataclass
class ReviewedTasks:
    """Per reviewed task: id, annotated label, the model's prediction, and the signals; `scores` the place
    encoding Label Studio sorts by (most suspicious lowest)."""

    task_ids: list[int]
    annotated: list
    predictions: list
    influence: np.ndarray
    loss: np.ndarray
    scores: np.ndarray
    signal: str
    boxes: dict | None = None  # detection: per box (arrays, one entry a box), `GET /review`'s list
    tags: list | None = None  # tagging: each annotation's likeliest wrong and missing tag (heads fit without it)


def _box_table(found, items, place) -> dict:
    """A BoxReview as arrays by box: its task, index, annotated class and box, the model's best match
    (class -1: none), the signals, and `scores` its place among all boxes (most suspicious lowest)."""
    targets = [i.label for i in items]
    image, box = found.image.tolist(), found.box.tolist()
    matches = [m or {"label": -1, "box": [np.nan] * 4, "score": np.nan} for m in found.matches]
    return {"task_ids": np.asarray([items[i].task_id for i in image], dtype=np.int64),
            "index": np.asarray(box, dtype=np.int64),
            "label": np.asarray([int(targets[i]["labels"][j]) for i, j in zip(image, box)], dtype=np.int64),
            "box": np.asarray([list(map(float, targets[i]["boxes"][j])) for i, j in zip(image, box)],
                              dtype=np.float64).reshape(-1, 4),
            "model_label": np.asarray([m["label"] for m in matches], dtype=np.int64),
            "model_box": np.asarray([m["box"] for m in matches], dtype=np.float64).reshape(-1, 4),
            "model_score": np.asarray([m["score"] for m in matches], dtype=np.float64),
            "influence": found.influence.numpy(), "loss": found.disagreement.numpy(), "scores": place}


def review_labeled(result, adapter, tasks, device, signal: str,
                   learner: Learner | None = None) -> ReviewedTasks | None:
    """The review of a job's labeled tasks (the reference set left out) with the round's s_test (`run_round`
    solves one when the strategy had none), or None when there is nothing to review. Measured (docs/results.md):
    a box's influence follows its class's prior, so boxes go by the model's disagreement; a head on frozen features
    memorises its labels, so its annotations go by influence beside the loss of heads fit without them (`learner`
    refits them)."""
    if result.scorer is None:
        return None
    frozen = learner is not None and learner.settings.frozen
    if signal == "auto":
        signal = "loss" if adapter.review_unit == "box" else "oof_combined" if frozen else "combined"
    in_r = {i.task_id for i in tasks.reference}
    keep = [k for k, item in enumerate(tasks.labeled) if item.task_id not in in_r]
    if not keep:
        return None
    # a dataset of its own (not a Subset): the scorer indexes by each item's position in its dataset
    subset = adapter.dataset([tasks.records["labeled"][k] for k in keep])
    found = review(result.model, adapter, subset, result.scorer.s_test, result.scorer.params, device)
    tagged = adapter.review_unit == "tag" and learner is not None  # each tag, by heads fit without the task
    fitted = learner.cross_fitted_outputs(subset) if tagged or (frozen and signal.startswith("oof")) else None
    if signal in ("oof_loss", "oof_combined") and frozen:  # (Learner.cross_fitted_loss, the heads fit once)
        found.oof_loss = adapter.loss(*fitted).double()
    order = review_order(found, signal)
    items = [tasks.labeled[k] for k in keep]
    boxes = None
    if adapter.review_unit == "box" and any(len(i.label["labels"]) for i in items):
        # an image is as suspicious as its worst box; images annotated with no box come last
        per_box = box_review(result.model, adapter, subset, result.scorer.s_test, result.scorer.params, device)
        by_box = review_order(per_box, signal)
        boxes = _box_table(per_box, items, place_scores(by_box, len(by_box)))
        first = per_box.image_order(signal)
        boxed = set(first)
        order = first + [k for k in order if k not in boxed]
    tags = adapter.tag_suspects(*fitted) if tagged else None
    return ReviewedTasks([i.task_id for i in items], [_jsonable(i.label) for i in items], found.predictions,
                         found.influence.numpy(), found.loss.numpy(), place_scores(order, len(keep)), signal, boxes,
                         tags)


def _jsonable(label):
    if isinstance(label, torch.Tensor):
        return label.tolist()
    if isinstance(label, dict):
        return {k: _jsonable(v) for k, v in label.items()}
    return label


@dataclass
class Clusters:
    """Cluster serving's clusters: the k-means centroids of the frozen embeddings (None where a task's cluster is
    its predicted class: a model retrained from scratch keeps no other id) and each pool task's cluster."""

    centroids: torch.Tensor | None
    of_pool: list[int]


@dataclass
class RoundOutcome:
    """What the round gives the publication: the engine's result, the adapter that made it, the metric on R
    ({name, value, on}; None for a cold start), the clusters with cluster serving, the order the pool is to be
    served in (positions), and for the report the processes it ran on and what the embedding cache saved."""

    result: RoundResult
    adapter: object
    metric: dict | None
    clusters: Clusters | None
    order: list[int]
    kind: str = "round"  # or "cold_start": no model yet, an order from the embeddings alone
    processes: int = 1
    embedding_cache: dict | None = None
    reviewed: ReviewedTasks | None = None  # the labeled tasks, most suspicious annotation first
    review_s: float = 0.0
    training_warnings: tuple[str, ...] = ()  # what the learner recovered from (a diverged training)
    strategy: str = "typiclust"  # what ranked the pool (ISAL_STRATEGY, auto resolved); a cold start's is TypiClust
    hygiene: HygieneReport | None = None  # near-duplicates, leaks and outliers (frozen features, ISAL_HYGIENE)
    warnings: dict = field(default_factory=dict)  # the job's (Warnings.as_dict's shape), with the round's own


def play_round(task_type: TaskType, engine: EngineSettings, records: dict[str, list],
               on_phase: Callable[[str], None], round_number: int = 0, adapter=None,
               datasets: tuple | None = None) -> tuple[RoundResult, dict]:
    """The round's compute (training, s_test, scoring the pool, the metric on R), in the job's process or as one
    rank of a group: (the result, {"metric", "embedding_cache", "training_warnings"}); the report is rank 0's."""
    adapter = adapter or task_type.adapter(engine)
    settings = task_type.engine_settings(engine)
    learner = Learner(adapter, settings, engine.seed)
    labeled, pool, reference = datasets or _datasets(adapter, records)
    result = learner.round(resolve_strategy(settings.strategy, settings), labeled, pool, reference,
                           budget=min(engine.budget, len(pool)),
                           train_set=adapter.dataset(records["labeled"], train=True), on_phase=on_phase,
                           round_number=round_number, predict=True)  # the model's predictions whatever the strategy
    if not learner.main_process:
        return result, {}
    on_phase("evaluating on R")
    return result, {"metric": learner.evaluate(result.model, reference), "training_warnings": learner.warnings,
                    "embedding_cache": adapter.cache.summary() if adapter.cache is not None else None}


def run_round(project: ProjectDir, task_type: TaskType, engine: EngineSettings, tasks: ProjectTasks,
              set_phase, job: int = 0) -> RoundOutcome:
    adapter = task_type.adapter(engine)
    adapter.prepare(progress=lambda done, total: set_phase(f"downloading the pretrained weights: {done} of {total} MB"))
    if tasks.cold:
        return _cold_start(project, engine, adapter, tasks, set_phase)
    records = tasks.records
    if adapter.cache is not None:  # frozen features: the datasets embed every image not in the cache
        set_phase("embedding images")
    if engine.job_procs > 1:  # training, scoring and the metric as a torchrun group
        with tempfile.TemporaryDirectory(prefix=GROUP_PREFIX, dir=project.root) as job_dir:
            result, report = run_in_group(engine.job_procs, task_type, engine, records, Path(job_dir), set_phase,
                                          job)
    labeled, pool, reference = _datasets(adapter, records)  # (after a group: its embeddings from the cache)
    if engine.job_procs <= 1:
        result, report = play_round(task_type, engine, records, set_phase, job, adapter, (labeled, pool, reference))
    settings = task_type.engine_settings(engine)
    strategy = resolve_strategy(settings.strategy, settings)  # (a task type may choose its own for auto)
    value, cache, notes = report["metric"], report["embedding_cache"], report["training_warnings"]
    source = settings.cluster_source if serves_clusters(strategy, settings) else None
    clusters = _clusters(project, engine, adapter, tasks, labeled, pool, result, source)
    order = result.ranking.order.tolist()
    if clusters is not None:  # the best of the least-labeled cluster, one after another
        order = served_order(order, clusters.of_pool, _labeled_clusters(tasks, labeled, clusters, source))
    optimistic = "" if tasks.reference_source == REFERENCE_FLAG else " (also trained on: optimistic)"
    metric = {"name": adapter.metric().name, "value": value, "on": tasks.reference_source + optimistic}
    reviewed, start = None, time.time()
    if engine.review:
        set_phase("reviewing the annotations")
        reviewer = Learner(adapter, settings, engine.seed)
        if result.scorer is None and len(reference):  # a strategy without influence (TypiClust): s_test for it
            # the Hessian over the labels alone: the review was measured so, and over a semi head's pseudo-
            # labels too its s_test cost 4 s more at 5,000 tasks (bench.job), past the 15 s a job may take
            result.scorer = reviewer.prepare("isal", result.model, labeled, reference, labels_only=True)
        device = next(result.model.parameters()).device
        reviewed = review_labeled(result, adapter, tasks, device, engine.review_signal, reviewer)
    review_s, warnings = round(time.time() - start, 2), _warnings(tasks.warnings, notes)
    hygiene = _hygiene(project, engine, adapter, tasks, (labeled, pool, reference), order, set_phase)
    return RoundOutcome(result, adapter, metric, clusters, hygiene.order if hygiene else order,
                        processes=engine.job_procs, embedding_cache=cache, reviewed=reviewed, review_s=review_s,
                        training_warnings=tuple(notes), strategy=strategy, hygiene=hygiene,
                        warnings={**warnings, **(hygiene.warnings if hygiene else {})})


def _datasets(adapter, records: dict[str, list]) -> tuple:
    """(labeled, pool, reference) datasets of a job's records."""
    return tuple(adapter.dataset(records[part]) for part in ("labeled", "pool", "reference"))


def _cold_start(project: ProjectDir, engine: EngineSettings, adapter, tasks: ProjectTasks,
                set_phase) -> RoundOutcome:
    """Too few labels for a model: the pool in TypiClust's order on the frozen embeddings."""
    if adapter.cache is None:
        raise JobError(f"need at least {engine.min_labeled} labeled tasks to train, have {len(tasks.labeled)}: a "
                       "cold start (ISAL_COLD_START) orders the tasks before any label only with pretrained frozen "
                       "features (ISAL_WEIGHTS)")
    set_phase("embedding the tasks (cold start)")
    datasets = _datasets(adapter, tasks.records)
    pool = datasets[1]
    order = typiclust_order(pool.x, engine.budget, engine.seed)
    warnings = _warnings(tasks.warnings, ())
    hygiene = _hygiene(project, engine, adapter, tasks, datasets, order, set_phase)
    order = hygiene.order if hygiene else order
    n = len(order)
    places = torch.empty(n, dtype=torch.float64)
    places[torch.tensor(order, dtype=torch.long)] = torch.arange(n, dtype=torch.float64)
    result = RoundResult(None, Ranking(torch.tensor(order, dtype=torch.long), places), None,
                         PoolScores(torch.full((n,), float("nan"), dtype=torch.float64), [None] * n))
    return RoundOutcome(result, adapter, None, None, order, kind="cold_start", embedding_cache=adapter.cache.summary(),
                        hygiene=hygiene, warnings={**warnings, **(hygiene.warnings if hygiene else {})})


def _warnings(job_warnings: dict, training: Sequence[str]) -> dict:
    """The job's warnings (Warnings.as_dict's shape) with what the learner recovered from."""
    if not training:
        return dict(job_warnings)
    return {**job_warnings, "training_recovered": {"count": len(training), "examples": list(training)}}


def _hygiene(project: ProjectDir, engine: EngineSettings, adapter, tasks: ProjectTasks, datasets, order,
             set_phase) -> HygieneReport | None:
    """Near-duplicates, leaks and outliers on the frozen embeddings (backend.job.hygiene), when on."""
    if not engine.hygiene or adapter.cache is None:
        return None
    set_phase("checking for duplicates and outliers")
    return check(project, tasks, datasets, order, engine.budget)


def _labeled_clusters(tasks: ProjectTasks, labeled, clusters, source) -> list[int]:
    """The clusters of the tasks labeled so far: their embeddings' nearest centroid, or their label (the
    cluster of a prediction, without frozen features, is the predicted class)."""
    if source == "predictions":
        return [int(i.label) for i in tasks.labeled]
    return assign(labeled.x, clusters.centroids).tolist() if len(tasks.labeled) else []


def _clusters(project: ProjectDir, engine: EngineSettings, adapter, tasks: ProjectTasks, labeled, pool, result,
              source) -> Clusters | None:
    """The clusters with cluster serving, else None. Without frozen features a task's cluster is its predicted
    class (no centroids)."""
    if source is None:
        return None
    if source == "predictions":
        return Clusters(None, [adapter.cluster(p) for p in result.scores.predictions])
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
    return Clusters(centroids, assign(pool.x, centroids).tolist())
