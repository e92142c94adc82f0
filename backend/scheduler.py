"""When training jobs run: per project at most one runs and one waits.

START_TRAINING always asks for a job; ANNOTATION_CREATED / ANNOTATION_UPDATED /
ANNOTATIONS_DELETED ask for one every ISAL_RETRAIN_EVERY events. The webhook returns at
once; a job runs on a background thread, and requests coalesce: however many events
arrive meanwhile, one job runs and one waits (the waiting job reads the project afresh
when it starts, so it sees every annotation made before then). Jobs of different
projects take turns (one CPU-heavy job at a time per process). What a job does is
backend.job.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from isal_core.errors import IsalError

from .tasktypes import UnsupportedConfig

log = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
TRAIN_EVENT = "START_TRAINING"


@dataclass
class ProjectJobs:
    running: bool = False
    pending: bool = False
    phase: str = "idle"
    events: int = 0
    started: int = 0
    coalesced: int = 0
    last: dict = field(default_factory=dict)
    last_error: str | None = None
    done: threading.Condition = field(default_factory=threading.Condition)

    def snapshot(self) -> dict:
        state = "running" if self.running else "idle"
        return {"state": state, "phase": self.phase, "pending": self.pending, "events_since_request": self.events,
                "jobs_started": self.started, "requests_coalesced": self.coalesced, "last_job": dict(self.last),
                "last_error": self.last_error}


class JobManager:
    """Coalescing per-project job runner. `run_job(project_id, set_phase) -> report dict`."""

    def __init__(self, run_job: Callable[[int, Callable[[str], None]], dict], retrain_every: int):
        self.run_job = run_job
        self.retrain_every = retrain_every
        self._lock = threading.Lock()
        self._compute = threading.Lock()  # one CPU-heavy job at a time in this process
        self._projects: dict[int, ProjectJobs] = {}

    def _state(self, project_id: int) -> ProjectJobs:
        return self._projects.setdefault(project_id, ProjectJobs())

    def annotation_event(self, project_id: int) -> str:
        """Count an annotation event; ask for a job every `retrain_every` of them."""
        with self._lock:
            st = self._state(project_id)
            st.events += 1
            if not self.retrain_every or st.events < self.retrain_every:
                return f"counted ({st.events}/{self.retrain_every or 'never'} toward a retrain)"
        return self.request(project_id, f"{self.retrain_every} annotation events")

    def request(self, project_id: int, reason: str) -> str:
        """Start a job, or mark one pending behind the running one (at most one waits)."""
        with self._lock:
            st = self._state(project_id)
            st.events = 0
            if st.running:
                if st.pending:
                    st.coalesced += 1
                    return "coalesced into the pending job"
                st.pending = True
                return "pending after the running job"
            st.running = True
            st.phase = "queued"
            st.started += 1
        threading.Thread(target=self._loop, args=(project_id, reason), daemon=True,
                         name=f"isal-job-{project_id}").start()
        return "started"

    def _loop(self, project_id: int, reason: str) -> None:
        while True:
            self._run_once(project_id, reason)
            with self._lock:
                st = self._state(project_id)
                if st.pending:
                    st.pending = False
                    st.started += 1
                    st.phase = "queued"
                    reason = "pending request"
                    continue
                st.running = False
                st.phase = "idle"
            with st.done:
                st.done.notify_all()
            return

    def _run_once(self, project_id: int, reason: str) -> None:
        st = self._state(project_id)

        def set_phase(phase: str) -> None:
            st.phase = phase

        t0 = time.time()
        st.last = {"status": "running", "reason": reason, "started_at": t0}
        with self._compute:
            try:
                log.info("project %s: job started (%s)", project_id, reason)
                report = self.run_job(project_id, set_phase) or {}
                st.last = {**report, "status": "done", "reason": reason, "started_at": t0,
                           "seconds": round(time.time() - t0, 2)}
                st.last_error = None
                log.info("project %s: job done in %.1f s: %s", project_id, time.time() - t0,
                         {k: report.get(k) for k in ("model_version", "counts", "warnings")})
            except Exception as exc:  # a failed job must not take the server down
                known = isinstance(exc, (IsalError, UnsupportedConfig))
                message = str(exc) if known else f"{type(exc).__name__}: {exc}"
                st.last = {"status": "failed", "reason": reason, "started_at": t0, "error": message,
                           "seconds": round(time.time() - t0, 2)}
                st.last_error = message
                log.error("project %s: job failed, keeping the current model: %s", project_id, message,
                          exc_info=not known)

    def snapshot(self, project_id: int) -> dict:
        with self._lock:
            return self._state(project_id).snapshot()

    def wait_idle(self, project_id: int, timeout: float) -> bool:
        """Block until no job runs or waits for the project (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        st = self._state(project_id)
        with st.done:
            while st.running or st.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                st.done.wait(min(left, 0.5))
        return True
