"""`python -m backend`: serve the ML backend with gunicorn, configured from the environment.

Runs exactly
    gunicorn --preload --bind $HOST:$PORT --workers $WORKERS --threads $THREADS --timeout 0
             --no-control-socket --config python:backend.gunicorn_hooks 'backend.app:create_app()'
(HOST defaults to 127.0.0.1; set HOST=0.0.0.0 in a container). `--timeout 0` because a
worker may be busy with a training job for minutes; `--preload` reads the settings and
MODEL_DIR once, before forking, and fails fast on a bad setting. The hooks start, in each
worker, the sweep that runs again a job a killed process left (backend.scheduler).
"""
from __future__ import annotations

import os
import sys

from pydantic import ValidationError

from .settings import Settings


def gunicorn_command(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--preload", "--bind", f"{settings.host}:{settings.port}",
            "--workers", str(settings.workers), "--threads", str(settings.threads), "--timeout", "0",
            "--no-control-socket", "--config", "python:backend.gunicorn_hooks", "backend.app:create_app()"]


def main() -> None:
    try:
        settings = Settings()  # validate the environment before handing over
    except ValidationError as exc:
        sys.exit(f"ISAL backend: bad setting in the environment:\n{exc}")
    # Idle OpenMP threads sleep instead of spinning: the backend shares the CPU with its web
    # threads and, often, Label Studio; spinning made small-CNN training 10x slower on 2 busy cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = gunicorn_command(settings)
    print("+", " ".join(cmd[1:]), flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
