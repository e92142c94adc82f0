"""gunicorn server hooks (`python -m backend` passes `--config python:backend.web.gunicorn_hooks`)."""


def post_worker_init(worker) -> None:
    """Each worker, after the fork, sweeps for jobs a dead process left (the preloaded master never runs jobs)."""
    worker.wsgi.extensions["isal"].start()
