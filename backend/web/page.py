"""GET /projects/<id>: what the model is doing, on one server-rendered page (no JavaScript).

The current version (strategy, backbone), the job running now with its phase and progress,
the last jobs with their durations, warnings and errors; the learning curve (every version's
metric on R against its labels, from the project's history) with the forecast of the labels
ISAL_TARGET_METRIC takes (isal_core.forecast: a power law and its 80 % band); the labeled
set's class balance, the reference set's size and class coverage (a class missing from R is
a warning: influence is only as good as R), the caches, the review, and data hygiene (leaks, duplicates,
outliers, the map of the tasks: backend.web.hygiene_map). Plots are inline
SVG from matplotlib, each drawn element with an id a test can find.
"""
from __future__ import annotations

import html
import io
import time

import numpy as np

from isal_core.forecast import forecast

from ..model import UNTRAINED, ISALModel
from ..storage.servers import label_studio_id
from ..storage.versions import read_review
from .hygiene_map import SUSPECTS, hygiene_section

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:62em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}.warn{color:#a40}h2{margin-top:1.5em}")


def project_page(backend: ISALModel, project_id: int) -> str:
    """The page's HTML (UnknownProject for a project this backend does not know: a 404 page)."""
    project = backend.model_dir.known(project_id)
    job = backend.jobs.snapshot(project_id)
    meta = project.current.meta if project.current else {}
    history = [h for h in project.history() if h.get("kind") == "round" and h.get("metric") is not None
               and h.get("labeled")]
    target = backend.settings.engine.target_metric
    points = ([h["labeled"] for h in history], [h["metric"] for h in history])
    fit = forecast(*points, target)
    labeled = (meta.get("counts") or {}).get("labeled", 0)
    body = [f"<h1>ISAL: project {project_id}</h1>", _summary(project, meta), _queue(backend.served_queue(project_id)),
            _job(job),
            "<h2>Learning curve and forecast</h2>", _forecast_text(fit, labeled, target, history),
            _curve_svg(points, fit, target) if history else "<p>No version with a metric on R yet: the curve "
                                                              "starts with the first trained version.</p>",
            "<h2>Labels</h2>", _balance(project, meta) if meta else _before_a_job(backend, project_id),
            hygiene_section(project, meta, _suspects(project)), _caches(job), _recent(job)]
    title = f"ISAL project {project_id}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"
            f"</head><body>{''.join(body)}</body></html>")


def _summary(project, meta: dict) -> str:
    if not meta:
        return f"<p>Model version: <b>{UNTRAINED}</b>: no job has published a version yet.</p>"
    identity = f", {meta['weights_identity']}" if meta.get("weights_identity") else ""
    backbone = f"{meta.get('arch')} ({meta.get('weights') or 'from scratch'}{identity}, {meta.get('adapter')})"
    metric = meta.get("reference_metric") or {}
    value = metric.get("value")
    rows = [(k, html.escape(str(v))) for k, v in [
        ("model version", meta.get("version")), ("kind", meta.get("kind", "round")), ("strategy", meta.get("strategy")),
        ("model", backbone), ("metric on R", f"{metric.get('name')} {value:.4f} ({metric.get('on')})"
                               if isinstance(value, (int, float)) else "none (a cold start, or not measured)")]]
    rows.append(("review", f"<a href='/review?project={project.id}'>the annotations most likely wrong</a>"
                 if (meta.get("counts") or {}).get("reviewed") else "none in this version"))
    return _table(rows, escape_values=False)


def _queue(queue: dict | None) -> str:
    """How much of the served version's queue annotators have left (Label Studio serves from it)."""
    if not queue:
        return ""
    low = queue["remaining"] <= queue["low_water"]
    return (f"<p id='served-queue'{' class=warn' if low else ''}>Served queue: <b>{queue['remaining']}</b> of "
            f"{queue['predicted']} predicted tasks left unlabeled ({queue['labeled']} labeled since this version "
            f"serves); a job is asked for at {queue['low_water']}.</p>")


def _job(job: dict) -> str:
    if job["state"] != "running":
        return f"<p>No job running{' (one is queued)' if job['pending'] else ''}.</p>"
    progress = job.get("progress") or {}
    done = (f": {progress['of']} {progress['done']} of {progress['total'] if progress.get('total') else '?'}"
            if progress else "")
    return f"<p id='job-running'>Job running: <b>{html.escape(str(job['phase']))}</b>{html.escape(done)}.</p>"


def _forecast_text(fit, labeled: int, target: float, history: list[dict]) -> str:
    if fit.labels is None:
        return f"<p id='forecast'>Forecast of the labels to {target:g}: {html.escape(fit.reason)}.</p>"
    if fit.reached:
        return f"<p id='forecast'>{html.escape(fit.reason)}.</p>"
    band = (f"{fit.low:,.0f} to {fit.high:,.0f}" if fit.high is not None else f"at least {fit.low:,.0f}"
            if fit.low is not None else "beyond the fitted range")
    return (f"<p id='forecast'>{history[-1]['metric_name']} reaches {target:g} at about <b>{fit.labels:,.0f}</b> "
            f"labels, about {fit.more(labeled):,.0f} more than the {labeled:,} labeled now (80 % band: {band}; a "
            f"power law fitted to {fit.points} versions; on the CPU protocols its error is in docs/results.md).</p>")


def _curve_svg(points, fit, target: float) -> str:
    from matplotlib.figure import Figure

    n, m = points
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    (curve,) = ax.plot(n, m, "o-", label="metric on R")
    curve.set_gid("learning-curve")
    ax.axhline(target, ls=":", color="gray").set_gid("target")
    if fit.labels is not None and not fit.reached:
        right = max(max(n), fit.high or fit.labels) * 1.05
        grid = np.linspace(min(n), right, 100)
        (line,) = ax.plot(grid, fit.curve(grid), "--", label="forecast")
        line.set_gid("forecast-curve")
        if fit.low is not None:
            ax.axvspan(fit.low, fit.high or right, alpha=0.15, label="80 % band").set_gid("forecast-band")
    ax.set_xlabel("labels")
    ax.set_ylabel("metric on R")
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    return out.getvalue()[out.getvalue().index("<svg"):]


def _balance(project, meta: dict) -> str:
    counts = meta.get("counts") or {}
    classes = (project.info.get("task_type") or {}).get("classes") or []
    name = lambda i: classes[int(i)] if int(i) < len(classes) else str(i)  # noqa: E731
    labels, reference = counts.get("labels") or {}, counts.get("reference_labels") or {}
    missing = [c for i, c in enumerate(classes) if str(i) not in reference]
    rows = [(name(i), labels.get(str(i), 0), reference.get(str(i), 0)) for i in range(len(classes))]
    warn = (f"<p class='warn' id='reference-warning'>No task of {', '.join(map(html.escape, missing))} is in the "
            "reference set R: influence is only as good as R; flag some (data.isal_reference) and label them.</p>"
            if missing and meta else "")
    return (f"<p>{counts.get('labeled', 0)} labeled tasks, {counts.get('unlabeled', 0)} unlabeled, R: "
            f"{counts.get('reference', 0)} tasks ({meta.get('reference_source', 'none')}).</p>" + warn
            + _table([("class", "labeled", "in R"), *rows], header=True))


def _suspects(project) -> list[int]:
    """The review's most suspicious annotated tasks (the map marks them)."""
    version = project.current
    if version is None or not (version.meta.get("counts") or {}).get("reviewed"):
        return []
    return [t["task"] for t in read_review(version.path, version.task_type, SUSPECTS)]


def _before_a_job(backend: ISALModel, project_id: int) -> str:
    """No version yet: the project's task counts as Label Studio has them (the first job sorts them into
    labeled, R and pool)."""
    try:
        found = backend.api_for(project_id).ls.projects.get(id=label_studio_id(project_id))
        total, annotated = int(found.task_number or 0), int(found.num_tasks_with_annotations or 0)
    except Exception as exc:  # the page still renders: Label Studio may be down or the key refused
        return f"<p class='warn' id='counts'>Label Studio's task counts are unavailable: {html.escape(str(exc))}</p>"
    return (f"<p id='counts'>{total:,} tasks in Label Studio, {annotated:,} annotated, {total - annotated:,} "
            "not yet; the first job sorts them into the labeled set, the reference set R and the pool.</p>")


def _caches(job: dict) -> str:
    cache = (job.get("last_job") or {}).get("embedding_cache")
    if not cache:
        return ""
    return (f"<p>Embedding cache in the last job: {cache.get('hits', 0)} hits, {cache.get('computed', 0)} computed, "
            f"{cache.get('corrupt', 0)} corrupt.</p>")


def _recent(job: dict) -> str:
    rows = [("started", "status", "seconds", "version", "warnings", "error")]
    for j in reversed(job.get("recent_jobs") or []):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(j["started_at"])) if j.get("started_at") else ""
        rows.append((started, j.get("status"), j.get("seconds"), j.get("model_version", ""),
                     ", ".join(f"{k} {v}" for k, v in (j.get("warnings") or {}).items()), j.get("error") or ""))
    return "<h2>Last jobs</h2>" + (_table(rows, header=True) if len(rows) > 1 else "<p>None yet.</p>")


def _table(rows, header: bool = False, escape_values: bool = True) -> str:
    cell = (lambda v: html.escape(str(v))) if escape_values else str  # noqa: E731
    out = []
    for k, row in enumerate(rows):
        tag = "th" if header and k == 0 else "td"
        out.append("<tr>" + "".join(f"<{tag}>{cell(v) if tag == 'td' else html.escape(str(v))}</{tag}>"
                                    for v in row) + "</tr>")
    return "<table>" + "".join(out) + "</table>"
