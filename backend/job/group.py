"""A job's round as a torchrun group: `ISAL_JOB_PROCS` > 1 (one process per GPU; gloo on CPU).

The worker has read the tasks and downloaded the images; what costs compute (training,
s_test, scoring the pool, the metric on R) then runs as

    torchrun --standalone --nproc-per-node N -m backend.job.rank <job dir>

on the records it writes to <job dir>/round.pt: DDP training, s_test solved once on rank 0
and broadcast, the pool sharded across ranks, the scores gathered on rank 0
(isal_core.utils.distributed). Rank 0 writes <job dir>/result.pt, and the job publishes it as
it would its own. The group's phases reach the job's /status through stdout lines.

A group never outlives its job: torchrun gets SIGKILL when the worker dies (Linux's
parent-death signal), and every rank exits when the worker's pid is gone, so a job left
to be run again (backend.scheduling.state) never runs beside a stale copy of itself.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from isal_core.learner import RoundResult

from ..errors import JobError
from ..settings import EngineSettings
from ..tasktypes import TaskType

log = logging.getLogger(__name__)
PHASE = "isal-phase: "  # a stdout line of rank 0 that names the phase now running
ERROR = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b")  # a traceback's last line
PARENT_ENV = "JOB_GROUP_PARENT_PID"  # (not ISAL_: that prefix is for settings)


def run_in_group(nproc: int, task_type: TaskType, engine: EngineSettings, records: dict[str, list],
                 job_dir: Path, set_phase: Callable[[str], None] = lambda p: None,
                 round_number: int = 0) -> tuple[RoundResult, dict]:
    """(the round's result, {"metric": value on R, "embedding_cache": stats or None}) from a group of
    `nproc` processes; JobError with the group's last output when it fails."""
    job_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"task_type": task_type.to_meta(), "engine": engine, "records": records, "round": round_number},
               job_dir / "round.pt")
    env = {**os.environ, PARENT_ENV: str(os.getpid()), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "backend.job.rank", str(job_dir)]
    log.info("job as a torchrun group of %d processes", nproc)
    group = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=_die_with_parent)
    errors: list[str] = []
    for line in group.stdout:
        if line.startswith(PHASE):
            set_phase(line[len(PHASE):].strip())
        elif ERROR.match(line):
            errors.append(line.strip())
        log.debug("group: %s", line.rstrip())
    if group.wait() != 0 or not (job_dir / "result.pt").exists():
        raise JobError(f"the torchrun group of {nproc} processes failed (exit {group.returncode}): "
                       + (errors[0] if errors else "no error printed (killed?)"))
    out = torch.load(job_dir / "result.pt", map_location="cpu", weights_only=False)
    return out["result"], out["report"]


def _die_with_parent() -> None:
    """In the torchrun agent, before exec: SIGKILL when the worker that started it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the ranks' own watch (below) still ends the group
