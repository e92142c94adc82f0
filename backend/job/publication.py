"""A job's publication: one owner for the transaction that makes a new model version serve.

    with Publication(project, api, version) as publication:   # a dead job's leftovers undone; staging
        publication.save(model, ..., scorer, ...)              # model, scorer, the job's scores, the review
        publication.write_predictions(stream, n)               # recorded as unpublished first
        publication.finish(meta)                               # meta.json: the mark of a whole version
    # the block ends: renamed into place, current here, Label Studio pointed at it, the record forgotten
    # the block raises: the version's predictions are deleted from Label Studio, the staging folder removed
    Publication.prune(project, api, keep)                      # older versions' predictions deleted

`Publication` is the only code that writes a version's staging folder, the project's
unpublished record and Label Studio's predictions and model_version. A job killed mid-way
leaves the record behind; the next publication begins with `reconcile`: predictions of
recorded versions never published are deleted, and Label Studio is pointed at the current
version if a crash came between publishing and that. `prune` keeps Label Studio's storage
bounded (KEEP_LS_VERSIONS); a job killed before it prunes leaves that to the next job.
`publish` is a job's third step: the served scores, the version's meta, the block above.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from itertools import chain

import numpy as np
import torch

from isal_core.train.checkpoints import save_checkpoint
from isal_core.utils.atomic import atomic_write, write_json
from isal_core.utils.progress import track

from ..errors import JobError
from ..labelstudio.client import LabelStudioAPI
from ..labelstudio.score_encoding import first_served, place_scores
from ..labelstudio.views import REVIEW_VIEW, ensure_view
from ..storage.layout import CENTROIDS, HYGIENE, META, MODEL, REVIEW, SCORER, SCORES, STAGING_PREFIX, UNPUBLISHED
from ..storage.projects import ProjectDir, new_version_name
from ..storage.versions import ModelVersion, save_review, save_scores
from ..tasktypes import TaskType
from .hygiene import publish_tab

log = logging.getLogger(__name__)


class Publication:
    """One version's way from a staging folder to what Label Studio serves (the module docstring)."""

    def __init__(self, project: ProjectDir, api: LabelStudioAPI | None, version: str):
        """`api` None publishes on disk only, nothing in Label Studio (a version made offline, e.g. by tests)."""
        self.project, self.api, self.version = project, api, version
        self.staging = project.root / f"{STAGING_PREFIX}{version}"
        self.written = 0  # predictions Label Studio kept
        self.reconciled: dict = {}  # what reconcile undid
        self.meta: dict = {}

    def __enter__(self) -> "Publication":
        for tmp in self.project.root.glob(f"{STAGING_PREFIX}*"):  # one job per project at a time: a dead job's
            log.warning("project %s: removing %s left by an interrupted job", self.project.id, tmp.name)
            shutil.rmtree(tmp, ignore_errors=True)
        if self.api is not None:
            self.reconciled = Publication.reconcile(self.project, self.api)
        self.staging.mkdir(parents=True)
        return self

    def save(self, model, model_meta: dict, scorer, task_ids, influences, predictions, clusters=None, *,
             scores, reviewed=None, hygiene=None) -> None:
        """The model and the scorer (where the strategy has them: none for a cold start, no scorer without
        influence), the job's scores: influence, prediction, served score (and the cluster centroids, the
        review of the labeled tasks, the hygiene report)."""
        if model is not None:
            save_checkpoint(self.staging / MODEL, model, model_meta)
        if scorer is not None:
            scorer.save(self.staging / SCORER)
        save_scores(self.staging / SCORES, task_ids, influences, predictions, scores,
                    None if clusters is None else clusters.of_pool)
        if clusters is not None and clusters.centroids is not None:
            with atomic_write(self.staging / CENTROIDS, "wb") as f:
                torch.save(clusters.centroids, f)
        if reviewed is not None:
            save_review(self.staging / REVIEW, reviewed)
        if hygiene is not None:
            write_json(self.staging / HYGIENE, hygiene.report)

    def write_predictions(self, predictions: Iterable[dict], expected: int) -> int:
        """Bulk-write the version's predictions, recorded as unpublished first; JobError unless Label Studio
        kept every one (the block then undoes the write)."""
        _write_record(self.project, sorted({*_read_record(self.project), self.version}))
        created = self.api.write_predictions(self.project.ls_id, predictions)
        if created < expected:  # a version that serves some tasks and not others would skew the queue
            raise JobError(f"Label Studio kept {created} of the {expected} predictions of {self.version} (it drops "
                           "what fails its validation); the version is not published and its predictions are "
                           "deleted. The backend's log has Label Studio's reasons.")
        self.written = created
        return created

    def finish(self, meta: dict) -> None:
        """meta.json, written last: a version folder with it is whole."""
        write_json(self.staging / META, meta)
        self.meta = meta

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._discard()
            return False
        final = self.project.root / self.version
        try:
            ModelVersion.open(self.staging)  # every file present, meta.json readable (ValueError if not)
            if final.exists():
                raise FileExistsError(f"model version {final} already exists")
            os.rename(self.staging, final)  # published on disk: from here on it is never discarded
        except BaseException:
            self._discard()
            raise
        self.project.adopt(final)
        self.project.append_history(self.meta)
        if self.api is not None:
            self.api.set_model_version(self.project.ls_id, self.version)  # Label Studio serves by it from now on
        _forget(self.project, self.version)
        return False

    def _discard(self) -> None:
        """A failed job's staging folder and predictions go (Label Studio's best effort: if it is
        unreachable, the next job's reconcile deletes them)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.api is None or self.version not in _read_record(self.project):
            return
        try:
            n = self.api.delete_version_predictions(self.project.ls_id, self.version)
            _forget(self.project, self.version)
            log.info("project %s: deleted the %d predictions of the failed job's version %s", self.project.id, n,
                     self.version)
        except Exception as exc:  # the job's own error is what the user must see
            log.warning("project %s: could not delete the predictions of %s yet (%s); the next job will",
                        self.project.id, self.version, exc)

    @staticmethod
    def reconcile(project: ProjectDir, api: LabelStudioAPI) -> dict:
        """Undo what a killed job left in Label Studio: predictions of versions it never published are
        deleted; a version published on disk that Label Studio does not serve yet becomes current there."""
        published, done = set(project.versions()), {}
        for version in _read_record(project):
            if version not in published:
                deleted = api.delete_version_predictions(project.ls_id, version)
                done.setdefault("deleted_predictions", {})[version] = deleted
                log.warning("project %s: deleted %d predictions of %s, a version an interrupted job never published",
                            project.id, deleted, version)
            _forget(project, version)
        current = project.current.name if project.current else None
        if current:
            serving = api.project_model_version(project.ls_id)
            if serving != current and (not serving or serving.startswith(f"isal-{project.id}-")):
                api.set_model_version(project.ls_id, current)
                done["model_version_set"] = current
                log.warning("project %s: Label Studio served %r; pointed it at the current version %s",
                            project.id, serving, current)
        return done

    @staticmethod
    def prune(project: ProjectDir, api: LabelStudioAPI, keep: int) -> dict[str, int]:
        """Delete the predictions of this backend's versions beyond the newest `keep` (0 = keep all), never the
        served version's nor another backend's; {version: predictions deleted}. Idempotent."""
        if keep <= 0:
            return {}
        ours = sorted((v for v in api.model_versions(project.ls_id) if _job_of(project, v) is not None),
                      key=lambda v: (_job_of(project, v), v), reverse=True)
        kept = set(ours[:keep]) | {api.project_model_version(project.ls_id)}
        deleted = {v: api.delete_version_predictions(project.ls_id, v) for v in ours[keep:] if v not in kept}
        if deleted:
            log.info("project %s: deleted the Label Studio predictions of %d old version(s) (KEEP_LS_VERSIONS=%d): "
                     "%s", project.id, len(deleted), keep, deleted)
        return deleted


def _job_of(project: ProjectDir, version: str) -> int | None:
    """The job number of one of this backend's version names (isal-<project>-<job>-...), else None."""
    head, _, rest = version.partition(f"isal-{project.id}-")
    number = rest.split("-", 1)[0]
    return int(number) if not head and number.isdigit() else None


def _read_record(project: ProjectDir) -> list[str]:
    try:
        return [str(v) for v in json.loads((project.root / UNPUBLISHED).read_text())["versions"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("project %s: unreadable %s (%s); starting it afresh", project.id, UNPUBLISHED, exc)
        return []


def _write_record(project: ProjectDir, versions: list[str]) -> None:
    write_json(project.root / UNPUBLISHED, {"versions": versions})


def _forget(project: ProjectDir, version: str) -> None:
    if version in (recorded := _read_record(project)):
        _write_record(project, [v for v in recorded if v != version])


def publish(project: ProjectDir, api: LabelStudioAPI, engine, task_type: TaskType, tasks, outcome, set_phase,
            job: int, keep_ls_versions: int = 0, per_version: int = 0) -> dict:
    """A job's last step: save the round's version, write its predictions (for the first `per_version` tasks
    of the served order and of the review's, 0 = all), make it current, then delete the predictions of
    versions beyond `keep_ls_versions`; the report."""
    result, task_ids = outcome.result, tasks.pool_ids
    influences = result.scores.influence.double().numpy()
    scores = place_scores(outcome.order, len(task_ids))  # the served order, diversity included, in the score
    meta = version_meta(project, engine, task_type, tasks, outcome, job, scores, influences)
    clusters, reviewed = outcome.clusters, outcome.reviewed
    with Publication(project, api, meta["version"]) as publication:
        publication.save(result.model, outcome.adapter.to_meta(), result.scorer, task_ids, influences,
                         result.scores.predictions, clusters, scores=scores, reviewed=reviewed,
                         hygiene=outcome.hygiene)
        set_phase("writing predictions")
        field = clusters.of_pool if clusters and engine.cluster_field else None
        pool, n = _first(task_type, meta["version"], task_ids, result.scores.predictions, scores, per_version,
                         meta["prelabel"]["on"], field)
        # the review's: the model's own label, the review's place as the score
        review, m = _first(task_type, meta["version"], reviewed.task_ids, reviewed.predictions, reviewed.scores,
                           per_version, True) if reviewed else ((), 0)
        publication.write_predictions(track(chain(pool, review), "writing predictions", total=n + m), n + m)
        meta["predicted_tasks"] = n  # the served queue: the first n of the order (backend.model.served_queue)
        publication.finish(meta)
    set_phase("deleting old predictions")  # the new version serves already; one transaction in Label Studio
    pruned = _after_publishing(project, api, keep_ls_versions, reviewed is not None)
    if outcome.hygiene is not None:
        set_phase("listing duplicates and outliers")
        tab = publish_tab(api, project, outcome.hygiene.flagged, (task_type.from_name, task_type.to_name))
    keys = ("kind", "strategy", "counts", "reference_source", "reference_note", "top_task", "top_score",
            "top_influence", "top_tasks", "solver_info", "warnings", "reference_metric", "prelabel", "hygiene")
    report = {"model_version": meta["version"], "predictions_written": publication.written,
              "label_studio_versions_pruned": pruned, **{k: meta[k] for k in keys}}
    if outcome.hygiene is not None:
        report["hygiene_tab"] = tab
    return {**report, "reconciled": publication.reconciled} if publication.reconciled else report


def _first(task_type: TaskType, version: str, task_ids, outputs, scores, limit: int, prelabel: bool,
           clusters=None) -> tuple[Iterable[dict], int]:
    """The predictions of the `limit` tasks Label Studio serves first, lowest score first (0 = all), and
    how many (score_encoding.first_served says why not all)."""
    shown = first_served(scores, limit)
    return task_type.predictions(version, [task_ids[i] for i in shown], [outputs[i] for i in shown],
                                 np.asarray(scores)[shown], prelabel=prelabel,
                                 clusters=None if clusters is None else np.asarray(clusters)[shown]), len(shown)


def _after_publishing(project: ProjectDir, api: LabelStudioAPI, keep: int, reviewed: bool) -> dict:
    """Publication.prune, and the review's Data Manager tab: a failure is a warning (the next job does it)."""
    try:
        if reviewed:
            ensure_view(api, project.ls_id, **REVIEW_VIEW)
        return Publication.prune(project, api, keep)
    except Exception as exc:
        log.warning("project %s: could not delete old versions' predictions yet (%s); the next job will",
                    project.id, exc)
        return {"error": str(exc)}


def version_meta(project: ProjectDir, engine, task_type: TaskType, tasks, outcome, job: int, scores,
                 influences) -> dict:
    """What meta.json records of a version: its kind, task, model, strategy, settings, counts, top tasks."""
    result, settings, task_ids = outcome.result, task_type.engine_settings(engine), tasks.pool_ids
    top = [int(p) for p in outcome.order[:10]]
    prelabel = engine.prelabel_decision(outcome.metric)
    return {
        "version": new_version_name(project.id, job), "kind": outcome.kind, "project": project.id, "job": job,
        "created_at": time.time(), "task_type": task_type.to_meta(), **outcome.adapter.to_meta(),
        "strategy": outcome.strategy, "batch": engine.budget, "solver": engine.solver,
        "damping": engine.damping, "params": settings.params, "top_k": engine.top_k, "epochs": engine.epochs,
        "seed": engine.seed, "solver_info": result.scorer.info if result.scorer else None, "learner": settings.learner,
        "score_encoding": "place", "warnings": outcome.warnings,
        "counts": {**tasks.counts, "reviewed": len(outcome.reviewed.task_ids) if outcome.reviewed else 0},
        "reference_source": tasks.reference_source, "reference_note": tasks.reference_note,
        "top_task": task_ids[top[0]], "top_score": float(scores[top[0]]), "top_influence": _finite(influences, top[0]),
        "top_tasks": [{"task": task_ids[p], "score": float(scores[p]), "influence": _finite(influences, p)}
                      for p in top],
        "reference_metric": outcome.metric, "prelabel": prelabel,
        "clusters": None if outcome.clusters is None or outcome.clusters.centroids is None
        else len(outcome.clusters.centroids),
        "cluster_source": outcome.clusters and settings.cluster_source, "cluster_field": bool(engine.cluster_field),
        "hygiene": outcome.hygiene and outcome.hygiene.summary,
    }


def _finite(values, i: int) -> float | None:
    return float(values[i]) if np.isfinite(values[i]) else None
