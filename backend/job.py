"""What a training job does: one ISAL round on a Label Studio project as it is now.

 1. pull every task with its annotations (ls_client.tasks_with_annotations);
 2. labeled set = tasks whose latest non-cancelled annotation carries a label of the
    config; reference set R = labeled tasks with data["isal_reference"] true (never
    trained on, never in the pool); without any, R = the first labeled set L1, saved
    the first time (the paper's ISAL_v2 ablation) and reported as such;
    pool = tasks without a non-cancelled annotation (and not flagged as reference);
 3. download their images (cached under MODEL_DIR/cache; 404s and undecodable files
    are skipped and counted, a refused API key fails the job);
 4. the engine's round (isal_core.Learner.round): train from scratch (seeded), s_test,
    influence and prediction of every pool task in one pass; score = sigmoid(I / sigma)
    (see backend.scores);
 5. write one prediction per pool task with a new model_version, publish the version on
    disk, then point the project at it with "Uncertainty sampling".
A job that fails anywhere leaves the current version, and the project's model_version in
Label Studio, as they were. The version is recorded as unpublished before its first
prediction is written; a failed job deletes what it wrote, and each job begins by
deleting the predictions of recorded versions that never got published (a job killed
mid-write) and by pointing Label Studio at the current version if a crash came between
publishing and that (backend.unpublished).
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from isal_core.learner import Learner

from .clusters import cluster_ids, project_centroids
from .errors import JobError, describe_api_error
from . import unpublished
from .faults import hold_point
from .group_round import run_in_group
from .ls_client import ApiError, LabelStudioAPI
from .prelabel import prelabel_decision
from .project_tasks import REFERENCE_FLAG, ProjectTasks, Warnings, read_tasks
from .scores import encode, influence_scale, ranking_scores
from .settings import EngineSettings
from .store import ProjectStore, new_version_name
from .tasktypes import TaskType, UnsupportedConfig
from .writeback import prediction_stream

log = logging.getLogger(__name__)


class Trainer:
    """Runs one job for a project (see the module docstring)."""

    def __init__(self, engine: EngineSettings, cache_dir: Path, api_for: Callable[[int], LabelStudioAPI]):
        self.engine = engine
        self.cache_dir = Path(cache_dir)
        self.api_for = api_for

    def run(self, store: ProjectStore, set_phase: Callable[[str], None] = lambda p: None) -> dict:
        try:
            return self._run(store, set_phase)
        except ApiError as exc:
            raise JobError(describe_api_error(exc)) from None

    def _run(self, store: ProjectStore, set_phase: Callable[[str], None]) -> dict:
        api = self.api_for(store.id)
        warnings, t = Warnings(), {"start": time.time()}
        set_phase("reading tasks")
        try:
            task_type = store.update_config(api.project_label_config(store.id))
        except UnsupportedConfig as exc:
            raise JobError(f"the project's labeling config is not supported: {exc}") from None
        t["reconcile"] = unpublished.reconcile(store, api)
        tasks = read_tasks(api, store.id, task_type, warnings)
        t["read"] = time.time()
        set_phase("downloading images")
        tasks.download(api, self.cache_dir, self.engine.download_workers, warnings)
        t["download"] = time.time()
        self._choose_reference(store, tasks, warnings)
        adapter = task_type.adapter(self.engine)
        engine = task_type.engine_settings(self.engine)  # detection: influence over the head, ...
        learner = Learner(adapter, engine, self.engine.seed)
        records = {part: tasks.records(part) for part in ("labeled", "pool", "reference")}
        group = None
        if self.engine.job_procs > 1:  # training and scoring as a torchrun group
            with tempfile.TemporaryDirectory(prefix=".group-", dir=store.root) as job_dir:
                result, group = run_in_group(self.engine.job_procs, task_type, self.engine, records,
                                             Path(job_dir), set_phase)
        labeled, pool = adapter.dataset(records["labeled"]), adapter.dataset(records["pool"])
        reference = adapter.dataset(records["reference"])
        if group is None:
            result = learner.round(self.engine.strategy, labeled, pool, reference,
                                   train_set=adapter.dataset(records["labeled"], train=True), on_phase=set_phase)
        clusters = self._clusters(store, adapter, tasks, labeled, pool, result, engine.cluster_source)
        value = learner.evaluate(result.model, reference) if group is None else group["metric"]
        metric = {"name": adapter.metric().name, "value": value,
                  "on": tasks.reference_source + (" (also trained on: optimistic)"
                                                  if tasks.reference_source != REFERENCE_FLAG else "")}
        t["score"] = time.time()
        report = self._publish(store, api, task_type, adapter, tasks, result, metric, clusters, warnings,
                               set_phase)
        if t["reconcile"]:
            report["reconciled"] = t["reconcile"]
        if group is not None:
            report["processes"] = self.engine.job_procs
            if group["embedding_cache"] is not None:
                report["embedding_cache"] = group["embedding_cache"]
        elif hasattr(adapter, "cache"):  # frozen features: what the embedding cache saved this job
            report["embedding_cache"] = {k: adapter.cache.stats[k] for k in ("hits", "computed", "corrupt")}
        t["write"] = time.time()
        del t["reconcile"]
        steps = ["start", "read", "download", "score", "write"]
        report["timings_s"] = {k: round(t[k] - t[p], 2) for p, k in zip(steps, steps[1:])}
        return report

    def _choose_reference(self, store: ProjectStore, tasks: ProjectTasks, warnings: Warnings) -> None:
        """R = the flagged tasks, else the first labeled set L1 (saved once); refuse what cannot train."""
        if len(tasks.labeled) < self.engine.min_labeled:
            raise JobError(f"need at least {self.engine.min_labeled} labeled tasks with a usable image to train, have "
                           f"{len(tasks.labeled)} (skipped: {dict(warnings.counts) or 'none'})")
        if not tasks.reference:
            l1, created = store.first_labeled_set([i.task_id for i in tasks.labeled])
            tasks.use_first_labeled_set(l1, created)
            (log.warning if created else log.info)(
                "project %s: no labeled task has data.%s = true; the reference set is the first labeled set "
                "L1 (%d tasks%s). Flag a labeled, representative set with \"%s\": true for better selection.",
                store.id, REFERENCE_FLAG, len(tasks.reference), ", saved now" if created else "", REFERENCE_FLAG)
        if not tasks.reference:
            raise JobError("the reference set is empty: no labeled task is flagged "
                           f"\"{REFERENCE_FLAG}\": true and none of the first labeled set L1 is usable")
        if not tasks.pool:
            raise JobError("no unlabeled task with a usable image is left to rank")

    def _clusters(self, store: ProjectStore, adapter, tasks: ProjectTasks, labeled, pool, result, source):
        """(centroids or None, cluster id per pool task) with cluster serving, else None. Without frozen
        features a task's cluster is its predicted class (no centroids)."""
        if source is None:
            return None
        if source == "predictions":
            return None, [adapter.cluster(p) for p in result.scores.predictions]
        k = self.engine.clusters or adapter.num_classes
        centroids = project_centroids(store.root, adapter.backbone_id, k, self.engine.seed, labeled, pool,
                                      [i.task_id for i in tasks.labeled], [i.task_id for i in tasks.pool])
        return centroids, cluster_ids(pool.x, centroids)

    def _publish(self, store, api, task_type: TaskType, adapter, tasks: ProjectTasks, result, metric: dict,
                 clusters, warnings: Warnings, set_phase) -> dict:
        """Save the version (staged), write its predictions to Label Studio, then make it current."""
        e = self.engine
        influences = result.scores.influence.double().numpy()
        sigma = influence_scale(influences)
        scores = ranking_scores(influences, result.ranking, sigma)
        top = int(result.ranking.order[0])
        task_ids = [i.task_id for i in tasks.pool]
        job = store.next_job_number()
        version = new_version_name(store.id, job)
        meta = {
            "version": version, "project": store.id, "job": job, "created_at": time.time(),
            "task_type": task_type.to_meta(), **adapter.to_meta(), "strategy": e.strategy,
            "solver": e.solver, "damping": e.damping, "params": task_type.engine_settings(e).params,
            "top_k": e.top_k, "epochs": e.epochs,
            "seed": e.seed, "solver_info": result.scorer.info, "sigma": sigma, "counts": tasks.counts(warnings),
            "reference_source": tasks.reference_source, "reference_note": tasks.reference_note,
            "top_task": task_ids[top], "top_score": float(scores[top]), "top_influence": float(influences[top]),
            "reference_metric": metric, "prelabel": prelabel_decision(e.prelabel, e.prelabel_min_metric, metric),
            "clusters": None if clusters is None or clusters[0] is None else len(clusters[0]),
            "cluster_source": task_type.engine_settings(e).cluster_source,
        }
        try:
            with store.staging(version) as staging:  # published when the block ends, removed if it fails
                store.write_files(staging, result.model, adapter.to_meta(), result.scorer, task_ids,
                                  influences, result.scores.predictions, clusters)
                hold_point("checkpoint")
                set_phase("writing predictions")
                stream = prediction_stream(task_type, version, task_ids, result.scores.predictions, scores,
                                           prelabel=meta["prelabel"]["on"], clusters=clusters and clusters[1])
                unpublished.mark(store, version)
                created = api.write_predictions(store.id, stream)
                hold_point("predictions")
                if created < len(task_ids):
                    warnings.add("predictions_dropped", "-", f"Label Studio kept {created} of {len(task_ids)} "
                                                              "predictions")
                if created == 0:
                    raise JobError(f"Label Studio kept none of the {len(task_ids)} predictions of {version}")
                meta["warnings"] = warnings.as_dict()
                store.write_meta(staging, meta)
        except BaseException:
            unpublished.discard(store, api, version)
            raise
        api.set_model_version(store.id, version)  # Label Studio serves by it from now on
        unpublished.forget(store, version)
        warnings.log(store.id)
        keys = ("counts", "reference_source", "reference_note", "top_task", "top_score", "sigma", "solver_info",
                "warnings", "reference_metric", "prelabel")
        return {"model_version": version, "predictions_written": created, **{k: meta[k] for k in keys}}

