"""What the backend counts, for `GET /metrics` in the Prometheus text format (prometheus-client).

Counters and histograms are incremented where the work happens: the job worker's process for
jobs, predictions and downloads, each web process for requests. `python -m backend` sets
PROMETHEUS_MULTIPROC_DIR (MODEL_DIR/.metrics, emptied at start), so every gunicorn worker and
the job worker write their samples there and a scrape of any web process adds them all up
(prometheus-client's multiprocess mode); an app made in one process counts in its own
registry. Jobs by state are read from the job table at scrape time, so every process agrees.
"""
from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

JOBS = Counter("isal_jobs", "Training jobs that ended, by outcome", ["outcome"])
JOB_SECONDS = Histogram("isal_job_seconds", "Seconds a job took", buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600))
PHASE_SECONDS = Histogram("isal_job_phase_seconds", "Seconds a job's phases took (read, download, score, write)",
                          ["phase"], buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900))
PREDICTIONS = Counter("isal_predictions_written", "Predictions Label Studio kept, written by jobs")
TASKS_SCORED = Counter("isal_tasks_scored", "Tasks ranked: by jobs (the pool) and by /predict (new tasks)",
                       ["by"])
DOWNLOAD_FAILURES = Counter("isal_download_failures", "Task files a job could not use, by cause", ["cause"])
REQUESTS = Counter("isal_requests", "HTTP requests answered, by route and status", ["route", "status"])


def record_job(report: dict, outcome: str) -> None:
    """A job's counters, from its report (the job worker's process)."""
    JOBS.labels(outcome).inc()
    if "seconds" in report:
        JOB_SECONDS.observe(report["seconds"])
    for phase, seconds in (report.get("timings_s") or {}).items():
        PHASE_SECONDS.labels(phase).observe(seconds)
    PREDICTIONS.inc(report.get("predictions_written") or 0)
    TASKS_SCORED.labels("job").inc((report.get("counts") or {}).get("unlabeled") or 0)
    for cause, info in (report.get("warnings") or {}).items():
        if cause.startswith(("image_", "download_")):
            DOWNLOAD_FAILURES.labels(cause).inc(info.get("count", 0))


class JobStates:
    """Jobs by state (running, pending, idle projects), read from the job table at each scrape."""

    def __init__(self, snapshots: Callable[[], list[dict]]):
        self.snapshots = snapshots

    def collect(self):
        family = GaugeMetricFamily("isal_jobs_now", "Projects by the state of their job", labels=["state"])
        counts = {"running": 0, "pending": 0, "idle": 0}
        snapshots = self.snapshots()
        for snap in snapshots:
            counts["running" if snap["state"] == "running" else "idle"] += 1
            counts["pending"] += bool(snap["pending"])
        for state, n in counts.items():
            family.add_metric([state], n)
        yield family
        queue = GaugeMetricFamily("isal_served_queue_remaining", "Predicted tasks of the served version not "
                                  "labeled yet (Label Studio serves from them; a job is asked for at a tenth)",
                                  labels=["project"])
        for snap in snapshots:
            if snap.get("served_queue"):
                queue.add_metric([str(snap["project"])], snap["served_queue"]["remaining"])
        yield queue


def exposition(snapshots: Callable[[], list[dict]]) -> tuple[bytes, str]:
    """(the text of /metrics, its content type): every process's samples, and the job states now."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        for collector in (JOBS, JOB_SECONDS, PHASE_SECONDS, PREDICTIONS, TASKS_SCORED, DOWNLOAD_FAILURES, REQUESTS):
            registry.register(collector)
    registry.register(JobStates(snapshots))
    return generate_latest(registry), CONTENT_TYPE_LATEST
