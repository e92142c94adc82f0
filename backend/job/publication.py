"""A job's publication: one owner for the transaction that makes a new model version serve.

    with Publication(project, api, version) as publication:   # undoes a dead job's leftovers, then stages
                                                               # MODEL_DIR/<p>/.tmp-<version>/
        publication.save(model, ..., scorer, ...)              # model, scorer, the job's scores
        publication.write_predictions(stream, n)               # recorded as unpublished first
        publication.finish(meta)                               # meta.json: the mark of a whole version
    # the block ends: renamed into place, current here, Label Studio pointed at it, the record forgotten
    # the block raises: the version's predictions are deleted from Label Studio, the staging folder removed
    Publication.prune(project, api, keep)                      # older versions' predictions deleted

`Publication` is the only code that writes a version's staging folder, the project's
unpublished record (MODEL_DIR/<project>/unpublished.json) and Label Studio's predictions and
model_version. The record is written before the first prediction, so a job killed mid-way
leaves it behind; the next publication begins with `Publication.reconcile`, which deletes
the predictions of recorded versions that were never published and points Label Studio at
the current version if a crash came between publishing and that. Once a version is published,
`prune` deletes from Label Studio the predictions of this backend's versions beyond the
newest KEEP_LS_VERSIONS (never those of the version Label Studio serves by), so a project
retrained every 40 annotations does not add a pool's worth of rows to Label Studio's
database forever; a job killed before it prunes leaves that to the next job.

`publish` is a job's third step: the scores Label Studio serves by, the version's meta, and
the block above.

The named points where a crash test holds a job still (`hold_point`: TEST_HOLD_AT=<point>
makes a job that reaches it create TEST_HOLD_FILE and wait forever; once the file exists no
job holds again) are the publication's: "checkpoint" (the model file is written, the rest
not yet), "predictions" (every prediction is in Label Studio, the version is neither
published on disk nor current there), "published" (published and current, the older
versions' predictions not deleted yet); and "group" (rank 0 of a torchrun group has trained
and scored, backend.job.group). Unset, as always outside crash tests, it does nothing.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from isal_core.train.checkpoints import save_checkpoint
from isal_core.utils.atomic import atomic_write, write_json

from ..errors import JobError
from ..labelstudio.client import LabelStudioAPI
from ..labelstudio.score_encoding import influence_scale, ranking_scores
from ..storage.layout import CENTROIDS, META, MODEL, SCORER, SCORES, STAGING_PREFIX, UNPUBLISHED
from ..storage.projects import ProjectDir, new_version_name
from ..storage.versions import ModelVersion, save_scores
from ..tasktypes import TaskType

log = logging.getLogger(__name__)


class Publication:
    """One version's way from a staging folder to what Label Studio serves (the module docstring)."""

    def __init__(self, project: ProjectDir, api: LabelStudioAPI | None, version: str):
        """`api` None publishes on disk only, nothing in Label Studio (a version made offline, e.g. by tests)."""
        self.project, self.api, self.version = project, api, version
        self.staging = project.root / f"{STAGING_PREFIX}{version}"
        self.written = 0  # predictions Label Studio kept
        self.reconciled: dict = {}  # what reconcile undid

    def __enter__(self) -> "Publication":
        for tmp in self.project.root.glob(f"{STAGING_PREFIX}*"):  # one job per project at a time: a dead job's
            log.warning("project %s: removing %s left by an interrupted job", self.project.id, tmp.name)
            shutil.rmtree(tmp, ignore_errors=True)
        if self.api is not None:
            self.reconciled = Publication.reconcile(self.project, self.api)
        self.staging.mkdir(parents=True)
        return self

    def save(self, model, model_meta: dict, scorer, task_ids, influences, predictions, clusters=None) -> None:
        """The model, the scorer, the job's scores (and the cluster centroids)."""
        save_checkpoint(self.staging / MODEL, model, model_meta)
        scorer.save(self.staging / SCORER)
        save_scores(self.staging / SCORES, task_ids, influences, predictions, None if clusters is None else clusters[1])
        if clusters is not None and clusters[0] is not None:
            with atomic_write(self.staging / CENTROIDS, "wb") as f:
                torch.save(clusters[0], f)
        hold_point("checkpoint")

    def write_predictions(self, predictions: Iterable[dict], expected: int) -> int:
        """Bulk-write the version's predictions, recorded as unpublished first; JobError unless Label Studio
        kept every one (the block then undoes the write)."""
        _write_record(self.project, sorted({*_read_record(self.project), self.version}))
        created = self.api.write_predictions(self.project.id, predictions)
        hold_point("predictions")
        if created < expected:  # a version that serves some tasks and not others would skew the queue
            raise JobError(f"Label Studio kept {created} of the {expected} predictions of {self.version} (it drops "
                           "what fails its validation); the version is not published and its predictions are "
                           "deleted. The backend's log has Label Studio's reasons.")
        self.written = created
        return created

    def finish(self, meta: dict) -> None:
        """meta.json, written last: a version folder with it is whole."""
        write_json(self.staging / META, meta)

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
        if self.api is not None:
            self.api.set_model_version(self.project.id, self.version)  # Label Studio serves by it from now on
        _forget(self.project, self.version)
        return False

    def _discard(self) -> None:
        """A failed job's staging folder and predictions go (Label Studio's best effort: if it is
        unreachable, the next job's reconcile deletes them)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.api is None or self.version not in _read_record(self.project):
            return
        try:
            n = self.api.delete_version_predictions(self.project.id, self.version)
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
                deleted = api.delete_version_predictions(project.id, version)
                done.setdefault("deleted_predictions", {})[version] = deleted
                log.warning("project %s: deleted %d predictions of %s, a version an interrupted job never published",
                            project.id, deleted, version)
            _forget(project, version)
        current = project.current.name if project.current else None
        if current:
            serving = api.project_model_version(project.id)
            if serving != current and (not serving or serving.startswith(f"isal-{project.id}-")):
                api.set_model_version(project.id, current)
                done["model_version_set"] = current
                log.warning("project %s: Label Studio served %r; pointed it at the current version %s",
                            project.id, serving, current)
        return done


    @staticmethod
    def prune(project: ProjectDir, api: LabelStudioAPI, keep: int) -> dict[str, int]:
        """Bounded Label Studio storage: delete the predictions of this backend's versions older than the
        newest `keep` (0 = keep all), never those of the version Label Studio serves by; other backends'
        versions are not touched. {version: predictions deleted}. Idempotent: a job killed before its
        prune leaves the work to the next job's."""
        if keep <= 0:
            return {}
        ours = sorted((v for v in api.model_versions(project.id) if _job_of(project, v) is not None),
                      key=lambda v: (_job_of(project, v), v), reverse=True)
        kept = set(ours[:keep]) | {api.project_model_version(project.id)}
        deleted = {v: api.delete_version_predictions(project.id, v) for v in ours[keep:] if v not in kept}
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
    recorded = _read_record(project)
    if version in recorded:
        _write_record(project, [v for v in recorded if v != version])


def publish(project: ProjectDir, api: LabelStudioAPI, engine, task_type: TaskType, tasks, outcome, set_phase,
            keep_ls_versions: int = 0) -> dict:
    """A job's last step: save the round's version, write its predictions, make it current, then delete the
    predictions of versions beyond `keep_ls_versions`; the report."""
    result = outcome.result
    influences = result.scores.influence.double().numpy()
    sigma = influence_scale(influences)
    scores = ranking_scores(influences, result.ranking, sigma)
    task_ids = tasks.pool_ids
    meta = version_meta(project, engine, task_type, tasks, outcome, sigma, scores, influences)
    clusters = outcome.clusters
    with Publication(project, api, meta["version"]) as publication:
        publication.save(result.model, outcome.adapter.to_meta(), result.scorer, task_ids, influences,
                         result.scores.predictions, clusters)
        set_phase("writing predictions")
        stream = task_type.predictions(meta["version"], task_ids, result.scores.predictions, scores,
                                       prelabel=meta["prelabel"]["on"], clusters=clusters and clusters[1])
        publication.write_predictions(stream, len(task_ids))
        publication.finish(meta)
    hold_point("published")
    pruned = _prune_safely(project, api, keep_ls_versions)
    keys = ("counts", "reference_source", "reference_note", "top_task", "top_score", "sigma", "solver_info",
            "warnings", "reference_metric", "prelabel")
    report = {"model_version": meta["version"], "predictions_written": publication.written,
              "label_studio_versions_pruned": pruned, **{k: meta[k] for k in keys}}
    return {**report, "reconciled": publication.reconciled} if publication.reconciled else report


def _prune_safely(project: ProjectDir, api: LabelStudioAPI, keep: int) -> dict:
    """Publication.prune, after the version is published: a failure is a warning (the next job prunes)."""
    try:
        return Publication.prune(project, api, keep)
    except Exception as exc:
        log.warning("project %s: could not delete old versions' predictions yet (%s); the next job will",
                    project.id, exc)
        return {"error": str(exc)}


def version_meta(project: ProjectDir, engine, task_type: TaskType, tasks, outcome, sigma: float, scores,
                 influences) -> dict:
    """What meta.json records of a version: its task, model, settings, counts and top task."""
    result, settings = outcome.result, task_type.engine_settings(engine)
    top = int(result.ranking.order[0])
    task_ids = tasks.pool_ids
    job = project.next_job_number()
    return {
        "version": new_version_name(project.id, job), "project": project.id, "job": job, "created_at": time.time(),
        "task_type": task_type.to_meta(), **outcome.adapter.to_meta(), "strategy": engine.strategy,
        "solver": engine.solver, "damping": engine.damping, "params": settings.params, "top_k": engine.top_k,
        "epochs": engine.epochs, "seed": engine.seed, "solver_info": result.scorer.info, "sigma": sigma,
        "counts": tasks.counts, "warnings": tasks.warnings, "reference_source": tasks.reference_source,
        "reference_note": tasks.reference_note, "top_task": task_ids[top], "top_score": float(scores[top]),
        "top_influence": float(influences[top]), "reference_metric": outcome.metric,
        "prelabel": prelabel_decision(engine.prelabel, engine.prelabel_min_metric, outcome.metric),
        "clusters": None if outcome.clusters is None or outcome.clusters[0] is None else len(outcome.clusters[0]),
        "cluster_source": settings.cluster_source,
    }


def prelabel_decision(policy: str, threshold: float, metric: dict) -> dict:
    """Whether the version's predictions carry the model's guess, which Label Studio pre-ticks in the labeling
    screen: {"policy", "on", "reason"}. A model trained on a handful of labels guesses badly, and an annotator
    who just presses Submit saves its wrong guess, so by default (ISAL_PRELABEL=auto) only a model whose metric
    on the reference set (`metric`: {name, value, on}) reaches ISAL_PRELABEL_MIN_METRIC prelabels."""
    if policy == "always":
        return {"policy": policy, "on": True, "reason": "ISAL_PRELABEL=always"}
    if policy == "never":
        return {"policy": policy, "on": False, "reason": "ISAL_PRELABEL=never"}
    on = metric["value"] >= threshold
    relation = "reaches" if on else "is below"
    return {"policy": policy, "on": on, "threshold": threshold,
            "reason": f"{metric['name']} {metric['value']:.3f} on the reference set ({metric['on']}) {relation} "
                      f"ISAL_PRELABEL_MIN_METRIC={threshold:g}: predictions {'carry' if on else 'do not carry'} "
                      f"the model's guess"}


def hold_point(name: str) -> None:
    """A crash test's hold (the module docstring): wait forever at `name` when TEST_HOLD_AT names it."""
    marker = os.environ.get("TEST_HOLD_FILE")
    if os.environ.get("TEST_HOLD_AT") != name or not marker or Path(marker).exists():
        return
    log.warning("TEST_HOLD_AT=%s: the job holds here until the process is killed", name)
    Path(marker).write_text(f"{name} {os.getpid()}")
    threading.Event().wait()
