"""Fault injection for the kill -9 tests (tests/test_crash_safety.py), kept out of the product.

A backend started with this folder on PYTHONPATH (`HOLD_ENV` there) imports this module in every Python
process it runs (gunicorn, the job workers, RQ workers, torchrun ranks). With TEST_HOLD_AT=<point>, the
first job to reach the point creates TEST_HOLD_FILE and waits until it is killed, or until
TEST_HOLD_RELEASE exists when that is set (then it goes on); once the hold file exists no job holds
again. The points, each wrapped around the product's own step:
- "checkpoint": Publication.save has written the version's files into staging, nothing else yet;
- "predictions": Label Studio holds every prediction, the version neither published nor current;
- "published": the version is current, older versions' predictions not pruned yet;
- "group": rank 0 of a torchrun group has scored the pool and is about to evaluate.
"""
import functools
import os
import time
from pathlib import Path


def hold(point: str) -> None:
    marker = os.environ.get("TEST_HOLD_FILE")
    if os.environ.get("TEST_HOLD_AT") != point or not marker or Path(marker).exists():
        return
    Path(marker).write_text(f"{point} {os.getpid()}")
    release = os.environ.get("TEST_HOLD_RELEASE")
    while not (release and Path(release).exists()):
        time.sleep(0.1)


def wrap(owner, name: str, point: str, after: bool) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def held(*args, **kwargs):
        if not after:
            hold(point)
        result = original(*args, **kwargs)
        if after:
            hold(point)
        return result

    setattr(owner, name, held)


if os.environ.get("TEST_HOLD_AT"):
    from backend.job import publication
    from backend.labelstudio.client import LabelStudioAPI
    from isal_core.learner import Learner

    wrap(publication.Publication, "save", "checkpoint", after=True)
    wrap(LabelStudioAPI, "write_predictions", "predictions", after=True)
    wrap(publication, "_after_publishing", "published", after=False)
    wrap(Learner, "evaluate", "group", after=False)
