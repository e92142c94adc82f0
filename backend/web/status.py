"""What the backend knows, as the routes answer it: /status, /versions, /review, /hygiene (read-only views of
MODEL_DIR and the job table; the Label Studio contract itself is backend.model)."""
from __future__ import annotations

import json

from ..errors import ApiProblem
from ..model import UNTRAINED, ISALModel
from ..storage.layout import HYGIENE
from ..storage.servers import parse_project_id
from ..storage.versions import read_review, review_signal


def versions(backend: ISALModel, project_ref) -> dict:
    if project_ref in (None, ""):
        return {"versions": {str(p.id): p.versions() for p in backend.model_dir.projects()},
                "model_dir": str(backend.model_dir.root)}
    try:
        project_id = parse_project_id(project_ref)
    except ValueError as exc:
        raise ApiProblem(400, str(exc)) from None
    return {"versions": backend.model_dir.known(project_id).versions(), "model_dir": str(backend.model_dir.root)}


def review(backend: ISALModel, project_id: int, limit: int | None = None) -> dict:
    """The current version's labeled tasks, most suspicious annotation first (backend.job.round: the review)."""
    version = backend.model_dir.known(project_id).current
    if version is None:
        return {"model_version": UNTRAINED, "tasks": [], "note": "no model yet: the first job reviews"}
    tasks = read_review(version.path, version.task_type, limit)
    why = ("a cold start: no model yet" if version.meta.get("kind") == "cold_start" else
           "no labeled task outside the reference set, or ISAL_REVIEW off")
    note = {} if tasks else {"note": f"this version reviewed nothing ({why})"}
    signal = review_signal(version.path) or backend.settings.engine.review_signal
    return {"model_version": version.name, "signal": signal, "tasks": tasks, **note}


def hygiene(backend: ISALModel, project_id: int) -> dict:
    """The current version's near-duplicate groups, leaks into R and outliers (backend.job.hygiene), without
    the map's coordinates (the project page draws them)."""
    version = backend.model_dir.known(project_id).current
    if version is None:
        return {"model_version": UNTRAINED, "note": "no version yet: each job checks the tasks"}
    path = version.path / HYGIENE
    if not path.is_file():
        return {"model_version": version.name, "note": "this version has no hygiene report (ISAL_HYGIENE off, or "
                                                       "no frozen features: it runs on their embeddings)"}
    report = json.loads(path.read_text())
    report.pop("map", None)
    return {"model_version": version.name, **report, "warnings": leak_warnings(version.meta)}


def leak_warnings(meta: dict) -> list[str]:
    """A sentence per leak: a reference task with a near-duplicate labeled for training or in the pool."""
    leaked = (meta.get("hygiene") or {}).get("leaked") or []
    if not leaked:
        return []
    return [f"{len(leaked)} reference task(s) have a near-duplicate outside R (labeled or in the pool): the metric "
            f"on R is optimistic; see /hygiene (reference tasks {', '.join(map(str, leaked[:10]))}"
            f"{', ...' if len(leaked) > 10 else ''})"]


def project_status(backend: ISALModel, project_id: int) -> dict:
    project = backend.model_dir.known(project_id)
    jobs = backend.jobs.snapshot(project_id)
    meta = project.current.meta if project.current else {}
    return {
        "project": project_id, "model_version": project.current.name if project.current else UNTRAINED,
        "job": jobs, "counts": meta.get("counts", {}), "last_error": jobs["last_error"],
        **{k: meta.get(k) for k in ("kind", "strategy", "reference_source", "reference_note", "top_task",
                                    "top_score", "top_influence", "top_tasks", "reference_metric", "prelabel")},
        "config_warnings": project.info.get("config_warnings", []),
        "warnings": meta.get("warnings", {}), "task_type": project.info.get("task_type"),
        "versions": len(project.versions()), "page": f"/projects/{project_id}", "model": _model(backend, meta),
        "review": f"/review?project={project_id}" if (meta.get("counts") or {}).get("reviewed") else None,
        "hygiene": meta.get("hygiene"), "hygiene_warnings": leak_warnings(meta),
        "served_queue": backend.served_queue(project_id),
    }


def _model(backend: ISALModel, meta: dict) -> dict:
    """The model the current version learned with (its backbone and the exact weights' identity: a packaged
    file's sha256), or before any version what the settings will give a classification project."""
    if meta.get("arch"):
        return {k: meta.get(k) for k in ("adapter", "arch", "weights", "weights_identity", "backbone", "learner")}
    engine = backend.settings.engine
    return {"adapter": "frozen" if engine.frozen else "classification", "arch": engine.arch,
            "weights": engine.weights, "weights_identity": None, "backbone": None, "learner": engine.learner,
            "note": "no version yet: the settings' model (a detection project's backbone is its own)"}


def status(backend: ISALModel) -> dict:
    return {"status": "UP", "model_dir": str(backend.model_dir.root), "engine": backend.settings.engine.model_dump(),
            "label_studio_url": backend.settings.label_studio_url,
            "projects": {str(p.id): project_status(backend, p.id) for p in backend.model_dir.projects()}}
