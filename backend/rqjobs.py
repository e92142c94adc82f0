"""Jobs through RQ + Redis (REDIS_URL): several workers, on several machines, serve several projects.

The job state stays in backend.jobstore (in Redis): an RQ job carries no project, only
"claim what waits and run it" (`run_claimable`), so coalescing, ownership and retries
follow one set of rules whichever way a job travels. The job worker (`python -m
backend.worker` with REDIS_URL) is an RQ worker of the "isal" queue plus a sweeper that
enqueues one such job whenever a job waits unclaimed or its process died (kill -9 of a
worker: its job is run again by another worker, or by it after a restart).
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)
QUEUE = "isal"
_backend = None


def _queue(url: str):
    import redis
    from rq import Queue

    return Queue(QUEUE, connection=redis.Redis.from_url(url))


def enqueue(url: str, store=None) -> None:
    """`run_claimable` RQ jobs: one per claimable job (`store` given: what it says waits, else one),
    less those already queued."""
    queue = _queue(url)
    wanted = len(store.claimable()) if store is not None else 1
    for _ in range(max(0, wanted - queue.count)):
        queue.enqueue(run_claimable, job_timeout=-1, result_ttl=3600, failure_ttl=7 * 86400)


def run_claimable() -> list[int]:
    """RQ job body: the backend of this environment claims waiting or orphaned jobs and runs them."""
    global _backend
    if _backend is None:
        from .model import ISALModel
        from .settings import Settings

        _backend = ISALModel(Settings(job_runner="web"))
    return _backend.jobs.run_claimable()


def work(url: str, store, stop: threading.Event, every: float = 5.0) -> None:
    """An RQ worker of the queue, with a sweeper thread that enqueues work the store says waits."""
    import redis
    from rq import Worker

    def sweep():
        while not stop.wait(every):
            try:
                enqueue(url, store)
            except Exception:
                log.exception("job sweep failed")

    threading.Thread(target=sweep, daemon=True, name="isal-rq-sweeper").start()
    connection = redis.Redis.from_url(url)
    enqueue(url, store)
    Worker([QUEUE], connection=connection).work(with_scheduler=False)
    stop.set()
