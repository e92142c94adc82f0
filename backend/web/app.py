"""The Label Studio ML backend over HTTP: a thin Flask layer over versions, jobs and tasktypes.

Routes (label-studio-ml 2.x protocol): GET /health, POST /setup, POST /predict,
POST /webhook, POST /train (what "Start training" posts while Label Studio's
ff_back_dev_1417 flag is off, the default), GET /versions, and GET /status (JSON:
per project model version, job state, counts, last error, reference source, top task).

Errors are JSON `{"error": message}` with a 4xx status whose reason phrase is the message
too: for /setup and /health Label Studio shows only "400 Client Error: <reason> for url",
so that is where the user reads why the backend refused a labeling config.

The Label Studio contract itself (setup, predict, fit) is backend.model.ISALModel. Run it
with gunicorn (`python -m backend`); job state is shared by every worker (backend.scheduling.state).
"""
from __future__ import annotations

import hmac
import html
import json
import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ..errors import ApiProblem, UnknownProject
from ..metrics import REQUESTS, exposition
from ..model import ISALModel
from ..scheduling.manager import TRAIN_EVENT
from ..settings import Settings
from ..storage.servers import parse_project_id
from . import status as views
from .openapi import SPEC
from .page import project_page

log = logging.getLogger("backend")


def error_response(status: int, message: str, **extra) -> Response:
    """JSON error whose HTTP reason phrase carries the message (one ASCII line)."""
    reason = " ".join(message.split()).encode("ascii", "replace").decode()[:300] or "Error"
    body = json.dumps({"error": message, **extra})
    return Response(body, status=f"{status} {reason}", mimetype="application/json")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


def _job_answer(answer: dict, status: int) -> Response:
    """The answer to a job request, with where to watch the job (this backend's /status)."""
    if "message" in answer:
        answer["status_url"] = f"{request.host_url.rstrip('/')}/status?project={answer['project']}"
        answer["page_url"] = f"{request.host_url.rstrip('/')}/projects/{answer['project']}"
        answer["message"] += f" Progress: {answer['page_url']} (JSON: {answer['status_url']})"
        log.info("%s", answer["message"])
    return json_response(answer, status)


def _json_body() -> dict:
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiProblem(400, "request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiProblem(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiProblem(400, "request body is nested too deeply to be a Label Studio request") from None
    if not isinstance(data, dict):
        raise ApiProblem(400, f"request body must be a JSON object, not {type(data).__name__}")
    return data


def create_app(settings: Settings | None = None, *, run_job=None) -> Flask:
    """The WSGI app. `run_job(project_id, set_phase) -> dict` replaces the training job (tests)."""
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("backend").setLevel(settings.log_level)
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    backend = ISALModel(settings, run_job)
    app = Flask("isal_backend")
    app.extensions["isal"] = backend
    if settings.basic_auth is not None:
        app.before_request(_basic_auth(*settings.basic_auth))
    app.after_request(_count_request)
    _error_handlers(app)
    _protocol_routes(app, backend)
    _view_routes(app, backend)
    return app


def _basic_auth(user: str, password: str):
    def check():
        if request.path == "/health":  # liveness for load balancers and container health checks: no data
            return None
        given = request.authorization
        ok = (given is not None and given.type == "basic"
              and hmac.compare_digest((given.username or "").encode(), user.encode())
              and hmac.compare_digest((given.password or "").encode(), password.encode()))
        if ok:
            return None
        resp = error_response(401, "Unauthorized: this ML backend needs the basic auth user and password "
                                   "set in BASIC_AUTH_USER / BASIC_AUTH_PASS")
        resp.headers["WWW-Authenticate"] = 'Basic realm="ISAL ML backend"'
        return resp

    return check


def _count_request(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule is not None else "(no route)"
    REQUESTS.labels(route, str(response.status_code)).inc()
    return response


def _error_handlers(app: Flask) -> None:
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


def _protocol_routes(app: Flask, backend: ISALModel) -> None:
    """The label-studio-ml protocol: health, setup, predict, webhook, train."""

    @app.get("/health")
    def health():
        return json_response({"status": "UP", "model_class": "ISAL"})

    @app.get("/")
    def about():
        return json_response({"status": "UP", "model_class": "ISAL", "model_dir": str(backend.model_dir.root),
                              "projects": len(backend.model_dir.projects())})

    @app.post("/setup")
    def setup():
        return json_response(backend.setup(_json_body()))

    @app.post("/predict")
    def predict():
        data = _json_body()
        return json_response(backend.predict(data.get("tasks"), data))

    @app.post("/webhook")
    def webhook():
        data = _json_body()
        return _job_answer(*backend.fit(data.get("action"), data))

    @app.post("/train")
    def train():
        data = _json_body()
        log.info("POST /train (Label Studio's \"Start training\") for project %s", data.get("project"))
        return _job_answer(*backend.fit(TRAIN_EVENT, {"project": data.get("project")}))



def _view_routes(app: Flask, backend: ISALModel) -> None:
    """What the backend knows: versions, status, review, metrics, the project page, this API's description."""

    @app.get("/versions")
    def versions():
        ref = request.args.get("project")
        if ref is None and request.get_data(cache=True).strip():
            ref = _json_body().get("project")
        return json_response(views.versions(backend, ref))

    @app.get("/status")
    def status():
        ref = request.args.get("project")
        if not ref:
            return json_response(views.status(backend))
        try:
            return json_response(views.project_status(backend, parse_project_id(ref)))
        except ValueError as exc:
            raise ApiProblem(400, str(exc)) from None

    def project_arg(route: str) -> int:
        try:
            return parse_project_id(request.args.get("project"))
        except ValueError as exc:
            raise ApiProblem(400, f"GET {route}?project=<id>: {exc}") from None

    @app.get("/review")
    def review():
        project_id = project_arg("/review")
        limit = request.args.get("limit")
        if limit is not None and (not limit.isdigit() or int(limit) < 1):
            raise ApiProblem(400, f"limit must be a positive integer, not {limit!r}")
        return json_response(views.review(backend, project_id, int(limit) if limit else None))

    @app.get("/hygiene")
    def hygiene():
        return json_response(views.hygiene(backend, project_arg("/hygiene")))

    @app.get("/projects/<int:project_id>")
    def project(project_id: int):
        try:
            return Response(project_page(backend, project_id), mimetype="text/html")
        except UnknownProject as exc:
            text = html.escape(str(exc))
            return Response(f"<!doctype html><title>ISAL: unknown project</title><h1>Unknown project</h1><p>{text}</p>",
                            status=404, mimetype="text/html")

    @app.get("/metrics")
    def metrics():
        body, content_type = exposition(lambda: [{**backend.jobs.snapshot(p.id), "project": p.id,
                                                  "served_queue": backend.served_queue(p.id)}
                                                 for p in backend.model_dir.projects()])
        return Response(body, mimetype=content_type.split(";")[0], content_type=content_type)

    @app.get("/openapi.json")
    def openapi():
        return json_response(SPEC)
