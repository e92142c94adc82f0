"""`python -m backend`: serve the ML backend with gunicorn, and run its job worker, from the environment.

Runs
    gunicorn --preload --bind $HOST:$PORT --workers $WORKERS --threads $THREADS --timeout 0
             --no-control-socket --config python:backend.web.gunicorn_hooks 'backend.web.app:create_app()'
(HOST defaults to 127.0.0.1; set HOST=0.0.0.0 in a container). `--timeout 0` because a
web worker may wait long on a Label Studio call; `--preload` reads the settings and
MODEL_DIR once, before forking, and fails fast on a bad setting.

With JOB_RUNNER=worker (the default here) it also runs `python -m backend.worker`, which
trains: the web processes only queue jobs. This process supervises both: a worker that
dies (kill -9, out of memory) is started again, and its interrupted job runs again; when
gunicorn stops, so does the worker; SIGTERM / SIGINT stop both. JOB_RUNNER=web runs
gunicorn alone, with jobs on a thread of the web worker (backend.scheduling.manager). JOB_RUNNER=external
runs gunicorn alone too, its web processes only queueing jobs (as with worker): the job workers
run elsewhere, e.g. the `worker` service of docker/docker-compose.yml (RQ through Redis).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from .metrics import MULTIPROC_ENV
from .settings import Settings
from .storage.layout import METRICS_DIR

#: A worker that keeps dying is started again after this many seconds at most.
MAX_BACKOFF_S = 30.0


def gunicorn_command(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--preload", "--bind", f"{settings.host}:{settings.port}",
            "--workers", str(settings.workers), "--threads", str(settings.threads), "--timeout", "0",
            "--no-control-socket", "--config", "python:backend.web.gunicorn_hooks", "backend.web.app:create_app()"]


def worker_command() -> list[str]:
    return [sys.executable, "-m", "backend.worker"]


def supervise(web_cmd: list[str], worker_cmd: list[str]) -> int:
    """Run the web server and the job worker; restart the worker when it dies; return gunicorn's exit code."""
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for proc in (web, worker):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    web = subprocess.Popen(web_cmd)
    worker = subprocess.Popen(worker_cmd)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff, started = 1.0, time.monotonic()
    while True:
        if web.poll() is not None:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(20)
                except subprocess.TimeoutExpired:
                    worker.kill()
            return web.returncode
        if worker.poll() is not None and not stopping:
            print(f"ISAL backend: the job worker exited ({worker.returncode}); starting it again in {backoff:g} s",
                  file=sys.stderr, flush=True)
            time.sleep(backoff)
            backoff = 1.0 if time.monotonic() - started > 60 else min(MAX_BACKOFF_S, backoff * 2)
            worker, started = subprocess.Popen(worker_cmd), time.monotonic()
        time.sleep(0.2)


def main() -> None:
    os.environ.setdefault("JOB_RUNNER", "worker")  # the web processes only queue; the worker trains
    try:
        settings = Settings()  # validate the environment before handing over
    except ValidationError as exc:
        sys.exit(f"ISAL backend: bad setting in the environment:\n{exc}")
    # Idle OpenMP threads sleep instead of spinning: the backend shares the CPU with its web
    # threads and, often, Label Studio; spinning made small-CNN training 10x slower on 2 busy cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # every process counts into one folder, which /metrics adds up (backend.metrics); a fresh one per start
    metrics = Path(settings.model_dir).resolve() / METRICS_DIR
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(metrics)
    cmd = gunicorn_command(settings)
    print("+", " ".join(cmd[1:]), flush=True)
    if settings.job_runner != "worker":
        os.execv(cmd[0], cmd)
    print("+", " ".join(worker_command()[1:]), flush=True)
    sys.exit(supervise(cmd, worker_command()))


if __name__ == "__main__":
    main()
