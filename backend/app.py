"""The Label Studio ML backend over HTTP: a thin Flask layer over versions, jobs and tasktypes.

Routes (label-studio-ml 2.x protocol): GET /health, POST /setup, POST /predict,
POST /webhook, POST /train (what "Start training" posts while Label Studio's
ff_back_dev_1417 flag is off, the default), GET /versions, and GET /status (JSON:
per project model version, job state, counts, last error, reference source, top task).

Errors are JSON `{"error": message}` with a 4xx status whose reason phrase is the message
too: for /setup and /health Label Studio shows only "400 Client Error: <reason> for url",
so that is where the user reads why the backend refused a labeling config.

Run it with gunicorn (`python -m backend`), one worker: jobs coalesce per process.
"""
from __future__ import annotations

import hmac
import json
import logging
import threading
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from isal_core.data import ImageRecord

from .jobs import ANNOTATION_EVENTS, TRAIN_EVENT, JobError, JobManager, Trainer, fetch_images
from .ls_client import LabelStudioAPI
from .scores import UNSCORABLE_SCORE, UNTRAINED_SCORE
from .settings import Settings
from .tasktypes import MissingMedia, UnsupportedConfig, parse_label_config
from .versions import ModelVersion, Registry, UnknownProject, parse_project_id

log = logging.getLogger("backend")

UNTRAINED = "untrained"


class ApiProblem(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str, **extra) -> Response:
    """JSON error whose HTTP reason phrase carries the message (one ASCII line)."""
    reason = " ".join(message.split()).encode("ascii", "replace").decode()[:300] or "Error"
    body = json.dumps({"error": message, **extra})
    return Response(body, status=f"{status} {reason}", mimetype="application/json")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


class Backend:
    """Everything the routes share: settings, the project registry, Label Studio clients, jobs."""

    def __init__(self, settings: Settings, run_job=None):
        self.settings = settings
        self.registry = Registry(settings.model_dir, settings.engine.device)
        self.trainer = Trainer(settings.engine, self.registry.cache_dir, self.api_for)
        self.jobs = JobManager(run_job or self._run_job, settings.engine.retrain_every)
        self._connections: dict[int, dict] = {}  # from /setup: hostname and access_token (memory only)
        self._apis: dict[tuple[str, str], LabelStudioAPI] = {}
        self._lock = threading.Lock()

    def _run_job(self, project_id: int, set_phase) -> dict:
        return self.trainer.run(self.registry.known(project_id), set_phase)

    def api_for(self, project_id: int) -> LabelStudioAPI:
        """Label Studio client: LABEL_STUDIO_URL / _API_KEY, else what /setup sent for the project."""
        conn = self._connections.get(project_id, {})
        url = self.settings.label_studio_url or conn.get("hostname")
        key = self.settings.label_studio_api_key or conn.get("access_token")
        if not url or not key:
            raise JobError("the backend does not know how to reach Label Studio: set LABEL_STUDIO_URL and "
                           "LABEL_STUDIO_API_KEY (legacy token or personal access token)")
        with self._lock:
            api = self._apis.get((url, key))
            if api is None:
                api = self._apis[(url, key)] = LabelStudioAPI(url, key, timeout=self.settings.label_studio_timeout)
            return api

    # -- protocol ------------------------------------------------------------
    def setup(self, data: dict) -> dict:
        project_id = _project(data)
        schema = data.get("schema")
        try:
            task_type = parse_label_config(schema)
        except UnsupportedConfig as exc:
            raise ApiProblem(400, f"Unsupported labeling config for the ISAL backend: {exc}") from None
        store = self.registry.get(project_id)
        store.register(schema, task_type)
        conn = {k: data[k] for k in ("hostname", "access_token") if isinstance(data.get(k), str) and data[k]}
        if conn:
            self._connections[project_id] = conn
        version = store.current.name if store.current else UNTRAINED
        return {"model_version": version}

    def predict(self, data: dict) -> dict:
        project_id = _project(data)
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            raise ApiProblem(400, "`tasks` must be a list of Label Studio tasks")
        store = self.registry.known(project_id)
        if isinstance(data.get("label_config"), str) and data["label_config"].strip():
            try:
                store.update_config(data["label_config"])
            except UnsupportedConfig as exc:
                raise ApiProblem(400, f"Unsupported labeling config for the ISAL backend: {exc}") from None
        version = store.current
        if version is None:
            return {"results": [_untrained(task, store) for task in tasks], "model_version": UNTRAINED}
        return {"results": self._predict_with(version, project_id, tasks), "model_version": version.name}

    def _predict_with(self, version: ModelVersion, project_id: int, tasks: list) -> list[dict]:
        task_type = version.task_type
        results: list[dict | None] = [None] * len(tasks)
        todo: list[tuple[int, int, str]] = []

        def unscorable(i, why):
            results[i] = {"result": [], "score": UNSCORABLE_SCORE, "model_version": version.name, "error": why}

        for i, task in enumerate(tasks):
            if not isinstance(task, dict) or not isinstance(task.get("id"), int):
                unscorable(i, "not a Label Studio task (a JSON object with an integer id)")
                continue
            cached = version.cached(task["id"])
            if cached is not None:
                influence, output = cached
                results[i] = {"result": task_type.prediction(output),
                              "score": float(version.encode([influence])[0]), "model_version": version.name}
                continue
            try:
                todo.append((i, task["id"], task_type.media_url(task)))
            except MissingMedia as exc:
                unscorable(i, str(exc))
        if todo:
            try:
                api = self.api_for(project_id)
                paths = fetch_images(api, [url for _, _, url in todo], self.registry.cache_dir,
                                     self.settings.engine.download_workers)
            except JobError as exc:
                paths = [exc] * len(todo)
            usable = []
            for (i, tid, _), path in zip(todo, paths):
                if isinstance(path, Path):
                    usable.append((i, tid, path))
                else:
                    unscorable(i, str(path))
                    log.warning("project %s: /predict cannot score task %s: %s", project_id, tid, path)
            if usable:
                dataset = task_type.dataset([ImageRecord(str(tid), str(p)) for _, tid, p in usable],
                                            int(version.meta.get("image_size", 32)), train=False)
                influences, outputs = version.score(dataset, self.settings.engine.batch_size)
                scores = version.encode(influences)
                for (i, _, _), out, s in zip(usable, outputs, scores):
                    results[i] = {"result": task_type.prediction(out), "score": float(s),
                                  "model_version": version.name}
        return results

    def webhook(self, data: dict) -> tuple[dict, int]:
        action = data.get("action")
        if not isinstance(action, str) or not action:
            raise ApiProblem(400, "webhook payload has no `action`")
        project_id = _project(data)
        self.registry.known(project_id)
        if action in ANNOTATION_EVENTS:
            outcome = self.jobs.annotation_event(project_id)
        elif action == TRAIN_EVENT:
            outcome = self.jobs.request(project_id, TRAIN_EVENT)
        else:
            return {"status": "ignored", "action": action, "project": project_id}, 200
        queued = outcome.startswith(("started", "pending", "coalesced"))
        return {"status": "ok", "action": action, "project": project_id, "job": outcome}, 202 if queued else 200

    def versions(self, project_ref) -> dict:
        if project_ref in (None, ""):
            return {"versions": {str(p.id): p.versions() for p in self.registry.projects()},
                    "model_dir": str(self.registry.root)}
        try:
            project_id = parse_project_id(project_ref)
        except ValueError as exc:
            raise ApiProblem(400, str(exc)) from None
        return {"versions": self.registry.known(project_id).versions(), "model_dir": str(self.registry.root)}

    def project_status(self, project_id: int) -> dict:
        store = self.registry.known(project_id)
        jobs = self.jobs.snapshot(project_id)
        current = store.current
        meta = current.meta if current else {}
        return {
            "project": project_id,
            "model_version": current.name if current else UNTRAINED,
            "job": jobs,
            "counts": meta.get("counts", {}),
            "last_error": jobs["last_error"],
            "reference_source": meta.get("reference_source"),
            "reference_note": meta.get("reference_note"),
            "top_task": meta.get("top_task"),
            "top_score": meta.get("top_score"),
            "sigma": meta.get("sigma"),
            "warnings": meta.get("warnings", {}),
            "task_type": store.info.get("task_type"),
            "versions": len(store.versions()),
        }

    def status(self) -> dict:
        e = self.settings.engine
        return {"status": "UP", "model_dir": str(self.registry.root),
                "engine": e.model_dump(),
                "label_studio_url": self.settings.label_studio_url,
                "projects": {str(p.id): self.project_status(p.id) for p in self.registry.projects()}}


def _project(data: dict) -> int:
    if "project" not in data:
        raise ApiProblem(400, "payload has no `project`")
    try:
        return parse_project_id(data["project"])
    except ValueError as exc:
        raise ApiProblem(400, str(exc)) from None


def _untrained(task, store) -> dict:
    entry = {"result": [], "score": UNTRAINED_SCORE, "model_version": UNTRAINED}
    if not isinstance(task, dict):
        entry["error"] = "not a Label Studio task (a JSON object)"
        return entry
    try:
        store.task_type().media_url(task)
    except MissingMedia as exc:
        entry["error"] = str(exc)
    return entry


def _json_body() -> dict:
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiProblem(400, "request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiProblem(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiProblem(400, f"request body must be a JSON object, not {type(data).__name__}")
    return data


def create_app(settings: Settings | None = None, *, run_job=None) -> Flask:
    """The WSGI app. `run_job(project_id, set_phase) -> dict` replaces the training job (tests)."""
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("backend").setLevel(settings.log_level)
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    if settings.workers > 1:
        log.warning("WORKERS=%d: jobs are coalesced per worker process, so two workers can train the same "
                    "project at once and /status shows one worker's view; WORKERS=1 is recommended",
                    settings.workers)
    backend = Backend(settings, run_job)
    app = Flask("isal_backend")
    app.extensions["isal"] = backend
    auth = settings.basic_auth

    @app.before_request
    def _check_auth():
        if auth is None:
            return None
        given = request.authorization
        ok = (given is not None and given.type == "basic"
              and hmac.compare_digest((given.username or "").encode(), auth[0].encode())
              and hmac.compare_digest((given.password or "").encode(), auth[1].encode()))
        if not ok:
            resp = error_response(401, "Unauthorized: this ML backend needs the basic auth user and password "
                                       "set in BASIC_AUTH_USER / BASIC_AUTH_PASS")
            resp.headers["WWW-Authenticate"] = 'Basic realm="ISAL ML backend"'
            return resp
        return None

    @app.errorhandler(ApiProblem)
    def _problem(exc: ApiProblem):
        log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc.message)
        return error_response(exc.status, exc.message)

    @app.errorhandler(UnknownProject)
    def _unknown(exc: UnknownProject):
        log.warning("%s %s -> 404: %s", request.method, request.path, exc)
        return error_response(404, str(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return error_response(exc.code or 500, f"{exc.name}: {exc.description}")

    @app.errorhandler(Exception)
    def _crash(exc: Exception):
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, f"internal error in the ISAL backend: {type(exc).__name__}: {exc}")

    @app.get("/health")
    @app.get("/")
    def health():
        return json_response({"status": "UP", "model_class": "ISAL", "model_dir": str(backend.registry.root),
                              "projects": len(backend.registry.projects())})

    @app.post("/setup")
    def setup():
        return json_response(backend.setup(_json_body()))

    @app.post("/predict")
    def predict():
        return json_response(backend.predict(_json_body()))

    @app.post("/webhook")
    def webhook():
        data, status = backend.webhook(_json_body())
        return json_response(data, status)

    @app.post("/train")
    def train():
        data = _json_body()
        log.info("POST /train (Label Studio's \"Start training\") for project %s", data.get("project"))
        data, status = backend.webhook({"action": TRAIN_EVENT, "project": data.get("project")})
        return json_response(data, status)

    @app.get("/versions")
    def versions():
        ref = request.args.get("project")
        if ref is None and request.get_data(cache=True).strip():
            ref = _json_body().get("project")
        return json_response(backend.versions(ref))

    @app.get("/status")
    def status():
        ref = request.args.get("project")
        if ref:
            try:
                return json_response(backend.project_status(parse_project_id(ref)))
            except ValueError as exc:
                raise ApiProblem(400, str(exc)) from None
        return json_response(backend.status())

    @app.get("/metrics")
    def metrics():
        return json_response({})

    return app
