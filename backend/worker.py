"""`python -m backend.worker`: the job worker. Claims the training jobs the web process queued in
MODEL_DIR/jobs.sqlite (and those a dead process left) and runs them, one at a time. With
REDIS_URL it is an RQ worker instead (backend.scheduling.rq_queue), and `run_claimable` below
is the body of every RQ job.

`python -m backend` starts one beside gunicorn and starts it again if it dies; run more
(on this machine, or on others sharing MODEL_DIR) to work on several projects at once:
a project's job still runs once at a time. SIGTERM stops it at once: a job it was running
is left to be run again, as after a crash (versions are published whole or not at all).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from pydantic import ValidationError

from .model import ISALModel
from .settings import Settings

log = logging.getLogger("backend.worker")
_backend: ISALModel | None = None


def run_claimable() -> list[int]:
    """RQ job body (enqueued by its dotted path): the backend of this environment claims a waiting or
    orphaned job and runs it here."""
    global _backend
    if _backend is None:
        _backend = ISALModel(Settings(job_runner="web"))
    return _backend.jobs.run_claimable()


def main() -> None:
    try:
        settings = Settings(job_runner="web")  # this process runs the jobs
    except ValidationError as exc:
        sys.exit(f"ISAL job worker: bad setting in the environment:\n{exc}")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    if settings.job_nice:  # background work: annotators' requests to Label Studio and the web come first
        os.nice(settings.job_nice)
    backend = ISALModel(settings)
    stop = threading.Event()
    if settings.redis_url:  # an RQ worker (it handles SIGTERM itself: finishes or abandons the job)
        from .scheduling.rq_queue import work

        log.info("job worker up: RQ on %s (MODEL_DIR %s)", _redacted(settings.redis_url), backend.model_dir.root)
        work(settings.redis_url, backend.jobs.table, stop)
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("job worker up (MODEL_DIR %s)", backend.model_dir.root)
    backend.jobs.work(stop)
    log.info("job worker stopping")


def _redacted(url: str) -> str:
    """A Redis URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl() \
        if parts.password else url


if __name__ == "__main__":
    main()
