"""The whole Label Studio contract in one class, in label-studio-ml's familiar shape.

    setup(data)              POST /setup: register the project and its labeling config
    predict(tasks, context)  POST /predict: one prediction per task, from the current version
    fit(event, data)         POST /webhook and /train: count annotations, queue a training job

HTTP is a thin layer of routes around it (backend.web.app); jobs run in the background
(backend.scheduling.manager: when; backend.job.run: what); Label Studio JSON <-> engine is
backend.tasktypes. Everything is per project, so one backend serves several projects.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from isal_core.data.images import ImageRecord
from isal_core.nets.backbones import missing_weights

from .errors import ApiProblem, JobError, MissingMedia, UnsupportedConfig
from .job.run import Job
from .job.tasks import fetch_images
from .labelstudio.client import LabelStudioAPI
from .labelstudio.download_policy import DownloadPolicy
from .labelstudio.score_encoding import UNSCORABLE_SCORE, UNTRAINED_SCORE
from .metrics import TASKS_SCORED
from .scheduling.manager import ANNOTATION_EVENTS, TRAIN_EVENT, JobManager
from .scheduling.served_queue import served_queue, task_of
from .settings import Settings
from .storage.layout import JOBS_DB
from .storage.projects import ModelDir
from .storage.retention import prune_cache, prune_versions
from .storage.servers import STRIDE, label_studio_reference
from .storage.versions import ModelVersion
from .tasktypes import parse_label_config

log = logging.getLogger("backend")
#: New tasks /predict downloads and scores at a time, checking its time budget between chunks.
PREDICT_CHUNK = 64

UNTRAINED = "untrained"


class ISALModel:
    """Everything the routes share: settings, MODEL_DIR's projects, Label Studio clients, jobs."""

    def __init__(self, settings: Settings, run_job=None):
        self.settings = settings
        self.model_dir = ModelDir(settings.model_dir, settings.engine.device, settings.engine.embedding_cache)
        if settings.engine.embedding_cache is None:  # frozen features are cached beside the models
            settings.engine.embedding_cache = self.model_dir.embedding_cache
        self.job = Job(settings.engine, self.model_dir.cache_dir, settings.keep_ls_versions,
                       settings.ls_predictions_per_version)
        self.jobs = JobManager(run_job or self._run_job, settings.engine.retrain_every,
                               self.model_dir.root / JOBS_DB, settings.job_stale_s,
                               runs_jobs=run_job is not None or settings.job_runner == "web",
                               redis_url=settings.redis_url)
        self._connections: dict[int, dict] = {}  # from /setup: hostname and access_token (also saved, 0600)
        self._apis: dict[tuple[str, str], LabelStudioAPI] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Background work of a serving process: run again the jobs a dead process left (gunicorn calls it
        in each worker after the fork; an in-process server calls it itself)."""
        self.jobs.start()

    def _run_job(self, project_id: int, set_phase) -> dict:
        project = self.model_dir.known(project_id)
        report = self.job.run(project, self.api_for(project.id), set_phase)
        report["pruned_versions"] = prune_versions(project, self.settings.keep_versions)
        if self.settings.cache_max_mb:
            report["image_cache"] = prune_cache(self.model_dir.cache_dir, int(self.settings.cache_max_mb * (1 << 20)))
        if self.settings.embedding_cache_max_mb and self.settings.engine.embedding_cache:
            report["embedding_cache_pruned"] = prune_cache(
                Path(self.settings.engine.embedding_cache), int(self.settings.embedding_cache_max_mb * (1 << 20)),
                "embedding cache")
        return report

    def api_for(self, project_id: int) -> LabelStudioAPI:
        """Label Studio client: LABEL_STUDIO_URL / _API_KEY, else what /setup sent for the project (saved for
        the job worker, which never sees /setup). The configured key goes to the configured URL alone: a
        /setup hostname is reached only with the token that came with it."""
        conn = self._connections.get(project_id) or self.model_dir.get(project_id).connection()
        if self.settings.label_studio_url:
            url = self.settings.label_studio_url
            key = self.settings.label_studio_api_key or conn.get("access_token")
        else:
            url, key = conn.get("hostname"), conn.get("access_token")
            if url and not key and self.settings.label_studio_api_key:
                raise JobError(f"/setup named {url} without a token, and LABEL_STUDIO_API_KEY goes only to "
                               "LABEL_STUDIO_URL, which is unset: set LABEL_STUDIO_URL to that Label Studio")
            if url and not self._allowed_host(url):
                raise JobError(f"{url} is not among LABEL_STUDIO_HOSTS ({self.settings.label_studio_hosts})")
        if not url or not key:
            raise JobError("the backend does not know how to reach Label Studio: set LABEL_STUDIO_URL and "
                           "LABEL_STUDIO_API_KEY (legacy token or personal access token)")
        with self._lock:
            api = self._apis.get((url, key))
            if api is None:
                policy = DownloadPolicy.from_settings(self.settings, url)
                api = self._apis[(url, key)] = LabelStudioAPI(url, key, timeout=self.settings.label_studio_timeout,
                                                              policy=policy)
            return api

    def _allowed_host(self, url: str) -> bool:
        """Whether a /setup hostname is one LABEL_STUDIO_HOSTS lists (any, when it is empty)."""
        listed = [h.strip() for h in self.settings.label_studio_hosts.split(",") if h.strip()]
        if not listed:
            return True
        parts = urlsplit(url if "//" in url else f"//{url}")
        names = {parts.hostname or "", parts.netloc}
        return any((urlsplit(h if "//" in h else f"//{h}").netloc or h) in names for h in listed)

    # -- the protocol ----------------------------------------------------------
    def setup(self, data: dict) -> dict:
        ls_id, created = _reference(data)
        conn = {k: data[k] for k in ("hostname", "access_token") if isinstance(data.get(k), str) and data[k]}
        if "hostname" in conn and not self.settings.label_studio_url and not self._allowed_host(conn["hostname"]):
            raise ApiProblem(403, f"{conn['hostname']} is not in LABEL_STUDIO_HOSTS={self.settings.label_studio_hosts}")
        server = 0 if self.settings.label_studio_url else self.model_dir.servers.number(conn.get("hostname"))
        project_id = server * STRIDE + ls_id
        schema = data.get("schema")
        try:
            task_type = parse_label_config(schema)
        except UnsupportedConfig as exc:
            raise ApiProblem(400, f"Unsupported labeling config for the ISAL backend: {exc}") from None
        project = self.model_dir.get(project_id)
        engine = task_type.engine_settings(self.settings.engine)
        weights = missing_weights(engine.arch, engine.weights)
        new = project.register(schema, task_type, [weights] if weights else [], created)
        for warning in project.info["config_warnings"]:
            log.warning("project %s: %s", project_id, warning)
        if conn:
            self._connections[project_id] = conn
            project.save_connection(conn)
        if new and project.current is None and self.settings.engine.cold_starts:  # order it before any label
            self.jobs.request(project_id, "the project was connected (cold start, or a first training)")
        return {"model_version": project.current.name if project.current else UNTRAINED}

    def predict(self, tasks, context: dict) -> dict:
        """`context` is the rest of Label Studio's /predict payload (project, label_config, params)."""
        project_id = self.project_of(context)
        if not isinstance(tasks, list):
            raise ApiProblem(400, "`tasks` must be a list of Label Studio tasks")
        project = self.model_dir.known(project_id)
        if isinstance(context.get("label_config"), str) and context["label_config"].strip():
            try:
                project.update_config(context["label_config"])
            except UnsupportedConfig as exc:
                raise ApiProblem(400, f"Unsupported labeling config for the ISAL backend: {exc}") from None
        version = project.current
        if version is None:
            return {"results": [_untrained(task, project) for task in tasks], "model_version": UNTRAINED}
        return {"results": self._predict_with(version, project_id, tasks), "model_version": version.name}

    def fit(self, event: str, data: dict) -> tuple[dict, int]:
        """A webhook event: annotations count toward a retrain; START_TRAINING asks for one now."""
        if not isinstance(event, str) or not event:
            raise ApiProblem(400, "webhook payload has no `action`")
        project_id = self.project_of(data)
        self.model_dir.known(project_id)
        if event in ANNOTATION_EVENTS:
            outcome = self.jobs.annotation_event(project_id)
            queue = self.served_queue(project_id, task_of(data) if event == "ANNOTATION_CREATED" else None)
            if queue and queue["remaining"] <= queue["low_water"] and outcome.startswith("counted"):
                outcome = self.jobs.request(project_id, f"the served queue runs dry: {queue['remaining']} of "
                                                        f"{queue['predicted']} predicted tasks left unlabeled")
        elif event == TRAIN_EVENT:
            outcome = self.jobs.request(project_id, TRAIN_EVENT)
        else:
            return {"status": "ignored", "action": event, "project": project_id}, 200
        queued = outcome.startswith(("started", "queued", "pending", "coalesced"))
        answer = {"status": "ok", "action": event, "project": project_id, "job": outcome}
        if queued:  # Label Studio shows this answer in its "Start training" dialog
            number = self.jobs.snapshot(project_id)["jobs_started"] + (0 if outcome == "started" else 1)
            answer.update(job_number=number, message=_job_message(outcome, number, project_id))
        return answer, 202 if queued else 200

    def project_of(self, data: dict) -> int:
        """The key of the project a request names (backend.storage.servers tells servers apart)."""
        _reference(data)  # a clear 400 for a missing or malformed reference
        return self.model_dir.servers.resolve(data["project"])

    def served_queue(self, project_id: int, labeled_task: int | None = None) -> dict | None:
        """The served version's queue (backend.scheduling.served_queue), counting `labeled_task` first."""
        return served_queue(self.model_dir.known(project_id).current, self.jobs.table, project_id, labeled_task)

    # -- predictions -------------------------------------------------------------
    def _predict_with(self, version: ModelVersion, project_id: int, tasks: list) -> list[dict]:
        """The job's stored score for tasks it ranked; tasks imported since are scored now."""
        task_type = version.task_type
        prelabel = version.meta.get("prelabel", {}).get("on", True)  # versions made before the policy: on
        results: list[dict | None] = [None] * len(tasks)
        todo: list[tuple[int, int, str]] = []

        adapter = version.adapter()
        with_cluster = version.meta.get("cluster_field", "score_encoding" not in version.meta)

        def answer(i, score, prediction, cluster=None):
            results[i] = {"result": task_type.prediction(prediction) if prelabel else [],
                          "score": float(score), "model_version": version.name}
            if cluster is not None and with_cluster:
                results[i]["cluster"] = int(cluster)

        for i, task in enumerate(tasks):
            if not isinstance(task, dict) or not isinstance(task.get("id"), int):
                results[i] = _unscorable(version, "not a Label Studio task (a JSON object with an integer id)")
            elif (cached := version.cached(task["id"])) is not None:
                score, _, prediction, cluster = cached
                answer(i, score, prediction, cluster)
            elif not version.scores_new_tasks:  # a cold start, or a strategy without influence
                results[i] = _deferred(version, None)
            else:
                try:
                    todo.append((i, task["id"], task_type.media_url(task)))
                except MissingMedia as exc:
                    results[i] = _unscorable(version, str(exc))
        deadline = time.monotonic() + self.settings.predict_budget_s
        for start in range(0, len(todo), PREDICT_CHUNK):  # new tasks, scored while the time budget lasts
            chunk = todo[start:start + PREDICT_CHUNK]
            if time.monotonic() >= deadline:
                for i, _, _ in chunk:
                    results[i] = _deferred(version, self.settings.predict_budget_s)
                continue
            usable = self._download(project_id, chunk, results, version)
            if usable:
                scores, clusters = version.score([ImageRecord(str(tid), str(p)) for _, tid, p in usable],
                                                 self.settings.engine.batch_size)
                TASKS_SCORED.labels("predict").inc(len(usable))
                encoded = version.encode(scores.influence.tolist())
                for (i, _, _), score, prediction, cluster in zip(usable, encoded, scores.predictions, clusters):
                    # a sample influence cannot rank (detection: no box above the threshold) is served last
                    answer(i, UNSCORABLE_SCORE if adapter.unscored(prediction) else score, prediction, cluster)
        return results

    def _download(self, project_id: int, todo: list, results: list, version: ModelVersion) -> list:
        """(position, task id, image path) of the tasks whose image could be fetched; the rest get an error."""
        if not todo:
            return []
        try:
            paths = fetch_images(self.api_for(project_id), [url for _, _, url in todo], self.model_dir.cache_dir,
                                 self.settings.engine.download_workers)
        except JobError as exc:
            paths = [exc] * len(todo)
        usable = []
        for (i, tid, _), path in zip(todo, paths):
            if isinstance(path, Path):
                usable.append((i, tid, path))
            else:
                results[i] = _unscorable(version, str(path))
                log.warning("project %s: /predict cannot score task %s: %s", project_id, tid, path)
        return usable


def _reference(data: dict) -> tuple[int, int | None]:
    """(Label Studio's project id, its creation second) of a request; ApiProblem 400 if it names none."""
    if "project" not in data:
        raise ApiProblem(400, "payload has no `project`")
    try:
        return label_studio_reference(data["project"])
    except ValueError as exc:
        raise ApiProblem(400, str(exc)) from None


def _job_message(outcome: str, number: int, project_id: int) -> str:
    if outcome == "started":
        return f"ISAL: training job {number} for project {project_id} started."
    if outcome.startswith("queued"):
        return f"ISAL: training job {number} for project {project_id} is queued; the job worker starts it."
    if outcome.startswith("pending"):
        return (f"ISAL: a job is running for project {project_id}; training job {number} is queued to run after it "
                f"and will see every annotation made until then.")
    return (f"ISAL: a job is running and training job {number} is already queued for project {project_id}; this "
            f"request joins it.")


def _deferred(version: ModelVersion, budget: float | None) -> dict:
    """A new task left for the next job: /predict's time (`budget`) ran out, or the version cannot score it."""
    why = (f"/predict's time budget (PREDICT_BUDGET_S={budget:g} s) was spent on other tasks" if budget is not None
           else f"version {version.name} ({version.meta.get('strategy')}) ranks only the tasks of its job")
    return {"result": [], "score": UNTRAINED_SCORE, "model_version": version.name,
            "deferred": f"not scored: {why}; the next training scores it"}


def _unscorable(version: ModelVersion, why: str) -> dict:
    return {"result": [], "score": UNSCORABLE_SCORE, "model_version": version.name, "error": why}


def _untrained(task, project) -> dict:
    entry = {"result": [], "score": UNTRAINED_SCORE, "model_version": UNTRAINED}
    if not isinstance(task, dict):
        return {**entry, "error": "not a Label Studio task (a JSON object)"}
    try:
        project.task_type().media_url(task)
    except MissingMedia as exc:
        entry["error"] = str(exc)
    return entry

