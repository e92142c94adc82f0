"""Jobs through RQ + Redis (REDIS_URL): several workers, on several machines, serve several projects.

The job state stays in backend.scheduling.state (in Redis): an RQ job carries no project, only
"claim what waits and run it" (`backend.worker.run_claimable`, enqueued by its dotted path, so
scheduling never imports the model that runs it), so coalescing, ownership and retries
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
#: The RQ job body, named by its dotted path (RQ imports it in the work horse).
JOB_BODY = "backend.worker.run_claimable"


def _queue(url: str):
    import redis
    from rq import Queue

    return Queue(QUEUE, connection=redis.Redis.from_url(url))


def enqueue(url: str, table=None) -> None:
    """RQ jobs of JOB_BODY: one per claimable job (`table` given: what it says waits, else one),
    less those already queued."""
    queue = _queue(url)
    wanted = len(table.claimable()) if table is not None else 1
    for _ in range(max(0, wanted - queue.count)):
        queue.enqueue(JOB_BODY, job_timeout=-1, result_ttl=3600, failure_ttl=7 * 86400)


def work(url: str, table, stop: threading.Event, every: float = 5.0) -> None:
    """An RQ worker of the queue, with a sweeper thread that enqueues work the job table says waits."""
    import redis
    from rq import Worker

    def sweep():
        while not stop.wait(every):
            try:
                enqueue(url, table)
            except Exception:
                log.exception("job sweep failed")

    threading.Thread(target=sweep, daemon=True, name="isal-rq-sweeper").start()
    connection = redis.Redis.from_url(url)
    enqueue(url, table)
    Worker([QUEUE], connection=connection).work(with_scheduler=False)
    stop.set()
