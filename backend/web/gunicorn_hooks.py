"""gunicorn server hooks (`python -m backend` passes `--config python:backend.web.gunicorn_hooks`)."""


def post_worker_init(worker) -> None:
    """Each worker, after the fork, sweeps for jobs a dead process left (the preloaded master never runs jobs)."""
    worker.wsgi.extensions["isal"].start()


def child_exit(server, worker) -> None:
    """A web worker that exits leaves its live gauges behind unless told (prometheus-client multiprocess mode)."""
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
