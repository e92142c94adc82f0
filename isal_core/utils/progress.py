"""Progress of the long loops (training steps, embeddings, scoring, downloads, writing), for a person and a program.

`track(iterable, desc)` is the one wrapper every long loop uses: a tqdm bar when `enabled`
(the command line), and, inside `with reporting(sink):`, calls of sink(desc, done, total)
at most every half second and at the end, so the backend shows done/total of the phase now
running in /status and on the project page. The sink is a context variable: a job's thread
reports to its own job.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

Sink = Callable[[str, int, "int | None"], None]
_SINK: ContextVar[Sink | None] = ContextVar("isal_progress_sink", default=None)
EVERY_S = 0.5


@contextmanager
def reporting(sink: Sink) -> Iterator[None]:
    """Within the block, the loops of this thread report to sink(desc, done, total)."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


def track(iterable: Iterable, desc: str, total: int | None = None, enabled: bool = False, **bar) -> Iterator:
    """The items of `iterable`, counted: a tqdm bar when `enabled`, and reports to the current sink."""
    sink = _SINK.get()
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    done, last = 0, 0.0
    for item in tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, **bar):
        yield item
        done += 1
        if sink is not None and (done == total or time.monotonic() - last >= EVERY_S):
            sink(desc, done, total)
            last = time.monotonic()


def report(desc: str, done: int, total: int | None) -> None:
    """One report to the current sink, for a loop that counts in its own way (threads, steps across epochs)."""
    sink = _SINK.get()
    if sink is not None:
        sink(desc, done, total)
