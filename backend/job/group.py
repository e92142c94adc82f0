"""A job's round as a torchrun group: `ISAL_JOB_PROCS` > 1 (one process per GPU; gloo on CPU).

The worker has read the tasks and downloaded the images; what costs compute (training,
s_test, scoring the pool, the metric on R) then runs as

    torchrun --standalone --nproc-per-node N -m backend.job.group <job dir>

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
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from isal_core.learner import Learner, RoundResult
from isal_core.selection import resolve_strategy
from isal_core.utils import distributed

from ..errors import JobError
from ..settings import EngineSettings
from ..tasktypes import TaskType, task_type_from_meta

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
               "-m", "backend.job.group", str(job_dir)]
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
    adapter = task_type.adapter(engine)
    settings = task_type.engine_settings(engine)
    learner = Learner(adapter, settings, engine.seed)
    records = spec["records"]
    labeled, pool = adapter.dataset(records["labeled"]), adapter.dataset(records["pool"])
    reference = adapter.dataset(records["reference"])

    def phase(name: str) -> None:
        if rank == 0:
            print(PHASE + name, flush=True)

    result = learner.round(resolve_strategy(engine.strategy, settings), labeled, pool, reference,
                           budget=min(engine.budget, len(pool)),
                           train_set=adapter.dataset(records["labeled"], train=True), on_phase=phase,
                           round_number=spec.get("round", 0), predict=True)
    if rank == 0:
        phase("evaluating on R")
        metric = learner.evaluate(result.model, reference)
        cache = adapter.cache.summary() if hasattr(adapter, "cache") else None
        result.model.cpu()
        tmp = Path(job_dir) / "result.pt.tmp"
        torch.save({"result": result, "report": {"metric": metric, "embedding_cache": cache,
                                                 "training_warnings": learner.warnings}}, tmp)
        tmp.replace(Path(job_dir) / "result.pt")
    distributed.finish()


if __name__ == "__main__":
    main(sys.argv[1])
