"""One rank of a job's torchrun group (backend.job.group starts them):

    torchrun --standalone --nproc-per-node N -m backend.job.rank <job dir>

Each rank plays the round the job's own process would (backend.job.round.play_round) on the records in
<job dir>/round.pt; rank 0 writes <job dir>/result.pt and prints the phases for the job's /status.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import torch

from isal_core.utils import distributed

from ..settings import EngineSettings
from ..tasktypes import task_type_from_meta
from .group import PARENT_ENV, PHASE
from .round import play_round


def _watch_parent(pid: int) -> None:
    """Every rank: exit at once when the worker that asked for this group is gone."""
    def watch():
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:
                pass
            time.sleep(1.0)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(job_dir: str) -> None:
    """One rank of the group (run by torchrun)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get(PARENT_ENV):
        _watch_parent(int(os.environ[PARENT_ENV]))
    spec = torch.load(Path(job_dir) / "round.pt", weights_only=False)
    engine: EngineSettings = spec["engine"]
    distributed.init_from_env(engine.device)
    rank, _ = distributed.rank_and_size()
    task_type = task_type_from_meta(spec["task_type"])

    def phase(name: str) -> None:
        if rank == 0:
            print(PHASE + name, flush=True)

    result, report = play_round(task_type, engine, spec["records"], phase, spec.get("round", 0))
    if rank == 0:
        result.model.cpu()
        tmp = Path(job_dir) / "result.pt.tmp"
        torch.save({"result": result, "report": report}, tmp)
        tmp.replace(Path(job_dir) / "result.pt")
    distributed.finish()


if __name__ == "__main__":
    main(sys.argv[1])
