"""When training jobs run: per project at most one runs and one waits, across processes and restarts.

START_TRAINING always asks for a job; ANNOTATION_CREATED / ANNOTATION_UPDATED /
ANNOTATIONS_DELETED ask for one every ISAL_RETRAIN_EVERY events. The webhook returns at
once; a job runs on a background thread, and requests coalesce: however many events
arrive meanwhile, one job runs and one waits (the waiting job reads the project afresh
when it starts, so it sees every annotation made before then). Jobs of different
projects take turns (one CPU-heavy job at a time per process).

The state lives in MODEL_DIR/jobs.sqlite (backend.scheduling.state), not in the process: every
gunicorn worker reports the same /status, coalescing holds across workers, counts
survive a restart, and a job whose process died (kill -9 mid-job) is claimed and run
again by the next sweep. Two ways to run jobs (JOB_RUNNER):
  worker  the web process only queues; `python -m backend.worker` (which `python -m backend`
          starts and restarts beside gunicorn) claims queued jobs and runs them: training
          never shares a process, or its GIL, with the web requests;
  web     the process that takes the request runs the job on a thread (and sweeps).
With REDIS_URL the state is in Redis and a queued job travels as an RQ job
(backend.scheduling.rq_queue): any RQ worker of the server runs it, on any machine sharing MODEL_DIR.
What a job does is backend.job.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from isal_core.errors import IsalError

from ..metrics import record_job
from .state import JobTable

log = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
TRAIN_EVENT = "START_TRAINING"
#: Seconds between heartbeats of a running job, and between sweeps for jobs whose process died.
HEARTBEAT_S = 5.0


class JobManager:
    """Coalescing per-project job runner over a JobTable. `run_job(project_id, set_phase) -> report dict`."""

    def __init__(self, run_job: Callable[[int, Callable[[str], None]], dict], retrain_every: int,
                 table_path: str | Path, stale_after: float = 60.0, runs_jobs: bool = True,
                 redis_url: str | None = None):
        self.run_job = run_job
        self.retrain_every = retrain_every
        self.runs_jobs = runs_jobs  # False: a web process that only queues (JOB_RUNNER=worker)
        self.redis_url = redis_url
        self.table = JobTable(table_path, stale_after, redis_url)
        self._compute = threading.Lock()  # one CPU-heavy job at a time in this process
        self._threads = 0  # job threads alive in this process (heartbeats run while > 0)
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None

    def annotation_event(self, project_id: int) -> str:
        """Count an annotation event; ask for a job every `retrain_every` of them."""
        n = self.table.count_event(project_id, self.retrain_every)
        if not self.retrain_every or n < self.retrain_every:
            return f"counted ({n}/{self.retrain_every or 'never'} toward a retrain)"
        return self.request(project_id, f"{self.retrain_every} annotation events")

    def request(self, project_id: int, reason: str) -> str:
        """Start (or queue for the worker) a job, or mark one pending behind the running one (at most one waits)."""
        outcome = self.table.request(project_id, reason, claim=self.runs_jobs)
        if outcome == "started":
            self._spawn(project_id, reason)
        elif outcome == "queued" and self.redis_url:
            from .rq_queue import enqueue

            enqueue(self.redis_url, self.table)
        return {"started": "started", "queued": "queued for the job worker", "pending": "pending after the running job",
                "coalesced": "coalesced into the pending job"}[outcome]

    def start(self) -> None:
        """Sweep for jobs left by a dead process, now and every HEARTBEAT_S (call once per serving process,
        after any fork: gunicorn's post_worker_init). A web process that only queues does not sweep."""
        if not self.runs_jobs:
            return
        with self._lock:
            if self._sweeper is not None and self._sweeper.is_alive():
                return
            self._sweeper = threading.Thread(target=self._sweep_forever, daemon=True, name="isal-job-sweeper")
            self._sweeper.start()

    def sweep(self, limit: int | None = None) -> list[int]:
        """Claim and start (at most `limit`) waiting jobs and jobs whose process died; their project ids."""
        claimed = self.table.claim_orphans(limit)
        for project_id, reason in claimed:
            if reason.startswith("resumed"):
                log.warning("project %s: %s; running it again", project_id, reason)
            self._spawn(project_id, reason)
        return [p for p, _ in claimed]

    def _sweep_forever(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception:  # a locked or unwritable store must not stop the sweeper
                log.exception("job sweep failed")
            time.sleep(HEARTBEAT_S)

    def run_claimable(self) -> list[int]:
        """Claim one waiting job (or one of a dead process) and run it here, now (an RQ job's body: one
        project per RQ job, so several RQ workers share the work)."""
        claimed = self.table.claim_orphans(limit=1)
        for project_id, reason in claimed:
            if reason.startswith("resumed"):
                log.warning("project %s: %s; running it again", project_id, reason)
            with self._lock:
                self._threads += 1
            self._loop(project_id, reason)
        return [p for p, _ in claimed]

    def work(self, stop: threading.Event, poll: float = 0.5) -> None:
        """The job worker's loop until `stop` is set: when idle, claim one queued job (or one of a dead
        process), so that other workers take the other projects' jobs meanwhile."""
        while not stop.is_set():
            try:
                if self._threads == 0:
                    self.sweep(limit=1)
            except Exception:  # a locked or unwritable store must not stop the worker
                log.exception("job sweep failed")
            stop.wait(poll)

    def _spawn(self, project_id: int, reason: str) -> None:
        with self._lock:
            self._threads += 1
        threading.Thread(target=self._loop, args=(project_id, reason), daemon=True,
                         name=f"isal-job-{project_id}").start()

    def _loop(self, project_id: int, reason: str) -> None:
        beat = threading.Event()
        threading.Thread(target=self._beat, args=(beat,), daemon=True, name=f"isal-beat-{project_id}").start()
        try:
            while reason is not None:
                last, error = self._run_once(project_id, reason)
                reason = self.table.finish(project_id, last, error)
        finally:
            beat.set()
            with self._lock:
                self._threads -= 1

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                self.table.heartbeat()
            except Exception:
                log.exception("job heartbeat failed")

    def _run_once(self, project_id: int, reason: str) -> tuple[dict, str | None]:
        def set_phase(phase: str, done: int | None = None, total: int | None = None) -> None:
            if done is None:  # a new phase; its long loops report their progress below
                self.table.update(project_id, phase=phase, progress=None)
            else:
                self.table.update(project_id, progress={"of": phase, "done": done, "total": total})

        t0 = time.time()
        self.table.update(project_id, last={"status": "running", "reason": reason, "started_at": t0})
        with self._compute:
            try:
                log.info("project %s: job started (%s)", project_id, reason)
                report = self.run_job(project_id, set_phase) or {}
                log.info("project %s: job done in %.1f s: %s", project_id, time.time() - t0,
                         {k: report.get(k) for k in ("model_version", "counts", "warnings")})
                done = {**report, "status": "done", "reason": reason, "started_at": t0,
                        "seconds": round(time.time() - t0, 2)}
                record_job(done, "done")
                return done, None
            except Exception as exc:  # a failed job must not take the server down
                known = isinstance(exc, IsalError)  # a message for the user, no traceback
                message = str(exc) if known else f"{type(exc).__name__}: {exc}"
                log.error("project %s: job failed, keeping the current model: %s", project_id, message,
                          exc_info=not known)
                failed = {"status": "failed", "reason": reason, "started_at": t0, "error": message,
                          "seconds": round(time.time() - t0, 2)}
                record_job(failed, "failed")
                return failed, message

    def snapshot(self, project_id: int) -> dict:
        return self.table.snapshot(project_id)

    def wait_idle(self, project_id: int, timeout: float) -> bool:
        """Block until no job runs or waits for the project (for tests, benchmarks and shutdown)."""
        deadline = time.monotonic() + timeout
        while self.table.busy(project_id):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True
