"""Named points where a job can be held still, so a test can kill -9 the backend exactly there.

TEST_HOLD_AT=<point> makes a job that reaches <point> create the file TEST_HOLD_FILE and wait
forever; once the file exists, no job holds again (a worker started again after the kill
runs the job through). Unset (always, outside crash tests), `hold_point` does nothing.
Points: "checkpoint" (the version's model file is written, the rest not yet) and
"predictions" (every prediction of the new version is in Label Studio, the version is
neither published on disk nor current there) and "group" (rank 0 of a job's torchrun group has
trained and scored, backend.group_round; the file holds that rank's pid).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)
POINTS = ("checkpoint", "predictions", "group")


def hold_point(name: str) -> None:
    marker = os.environ.get("TEST_HOLD_FILE")
    if os.environ.get("TEST_HOLD_AT") != name or not marker or Path(marker).exists():
        return
    log.warning("TEST_HOLD_AT=%s: the job holds here until the process is killed", name)
    Path(marker).write_text(f"{name} {os.getpid()}")
    threading.Event().wait()
