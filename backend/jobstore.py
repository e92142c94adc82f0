"""Job state that outlives the process: MODEL_DIR/jobs.sqlite (stdlib sqlite3, WAL).

One row per project: whether a job runs (and which process owns it, with a heartbeat),
whether one waits, the phase, counters and the last outcome. Every change is one
`BEGIN IMMEDIATE` transaction, so "start a job or mark one pending" is atomic across
threads and processes (several gunicorn workers see one state, and coalescing holds
across them). A job whose owner died (kill -9, OOM, a lost container) is seen as such:
its process is gone (same host), or its heartbeat is older than `stale_after`; the
next sweep claims it and runs it again. Nothing here runs jobs: backend.scheduler does.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    project   INTEGER PRIMARY KEY,
    events    INTEGER NOT NULL DEFAULT 0,
    running   INTEGER NOT NULL DEFAULT 0,
    pending   INTEGER NOT NULL DEFAULT 0,
    reason    TEXT,
    phase     TEXT NOT NULL DEFAULT 'idle',
    started   INTEGER NOT NULL DEFAULT 0,
    coalesced INTEGER NOT NULL DEFAULT 0,
    resumed   INTEGER NOT NULL DEFAULT 0,
    last      TEXT NOT NULL DEFAULT '{}',
    last_error TEXT,
    owner     TEXT,
    heartbeat REAL
)"""

_TOKENS: dict[int, str] = {}


def process_id() -> str:
    """host:pid:token of this process (the token tells a restarted process from its dead namesake)."""
    pid = os.getpid()
    token = _TOKENS.setdefault(pid, uuid.uuid4().hex[:12])
    return f"{socket.gethostname()}:{pid}:{token}"


def owner_gone(owner: str | None) -> bool:
    """True when `owner` is a process of this host that no longer runs (or an earlier incarnation of a pid)."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_s, _, token = rest.partition(":")
    if host != socket.gethostname() or not pid_s.isdigit():
        return False  # another machine's worker: only its heartbeat can tell
    pid = int(pid_s)
    if pid == os.getpid():
        return owner != process_id()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class JobStore:
    """The jobs table of one MODEL_DIR (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, stale_after: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stale_after = stale_after
        with self._tx() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @staticmethod
    def _row(db: sqlite3.Connection, project: int) -> dict:
        db.execute("INSERT OR IGNORE INTO jobs (project) VALUES (?)", (project,))
        cur = db.execute("SELECT * FROM jobs WHERE project = ?", (project,))
        return dict(zip([c[0] for c in cur.description], cur.fetchone()))

    # -- transitions -------------------------------------------------------------
    def count_event(self, project: int, every: int) -> int:
        """Count an annotation event; the count so far (the caller asks for a job at `every`)."""
        with self._tx() as db:
            n = self._row(db, project)["events"] + 1
            db.execute("UPDATE jobs SET events = ? WHERE project = ?", (n, project))
            return n

    def request(self, project: int, reason: str, claim: bool = True) -> str:
        """"started" (`claim`: the caller now owns the job and must run it), "queued" (not `claim`: a
        worker's sweep takes it), "pending" (one runs: this one waits) or "coalesced" (one waits already)."""
        with self._tx() as db:
            row = self._row(db, project)
            if row["pending"]:
                db.execute("UPDATE jobs SET events = 0, coalesced = coalesced + 1 WHERE project = ?", (project,))
                return "coalesced"
            if row["running"] or not claim:
                db.execute("UPDATE jobs SET events = 0, pending = 1, reason = CASE WHEN running THEN reason "
                           "ELSE ? END WHERE project = ?", (reason, project))
                return "pending" if row["running"] else "queued"
            db.execute("UPDATE jobs SET events = 0, running = 1, pending = 0, phase = 'queued', reason = ?, "
                       "started = started + 1, owner = ?, heartbeat = ? WHERE project = ?",
                       (reason, process_id(), time.time(), project))
            return "started"

    def finish(self, project: int, last: dict, error: str | None) -> str | None:
        """Record the outcome; if a job waits, this process owns it now: its reason, else None."""
        with self._tx() as db:
            row = self._row(db, project)
            if row["owner"] != process_id():
                return None  # claimed by another process meanwhile (we were thought dead): theirs now
            db.execute("UPDATE jobs SET last = ?, last_error = ? WHERE project = ?", (json.dumps(last), error, project))
            if row["pending"]:
                db.execute("UPDATE jobs SET pending = 0, started = started + 1, phase = 'queued', reason = ?, "
                           "heartbeat = ? WHERE project = ?", ("pending request", time.time(), project))
                return "pending request"
            db.execute("UPDATE jobs SET running = 0, phase = 'idle', owner = NULL, heartbeat = NULL "
                       "WHERE project = ?", (project,))
            return None

    def update(self, project: int, **fields) -> None:
        """phase / last of a job this process owns (also refreshes its heartbeat)."""
        sets = {k: json.dumps(v) if k == "last" else v for k, v in fields.items() if k in ("phase", "last")}
        sql = ", ".join(f"{k} = ?" for k in sets) + (", " if sets else "") + "heartbeat = ?"
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {sql} WHERE project = ? AND owner = ?",
                       (*sets.values(), time.time(), project, process_id()))

    def heartbeat(self) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET heartbeat = ? WHERE owner = ?", (time.time(), process_id()))

    def claim_orphans(self) -> list[tuple[int, str]]:
        """Take over jobs whose owner died (or that wait with no job running): [(project, reason)] to run now."""
        now, me, claimed = time.time(), process_id(), []
        with self._tx() as db:
            cur = db.execute("SELECT project, running, pending, reason, owner, heartbeat FROM jobs "
                             "WHERE running = 1 OR pending = 1")
            for project, running, pending, reason, owner, beat in cur.fetchall():
                if running and owner != me and (owner_gone(owner) or (beat or 0) < now - self.stale_after):
                    why = f"resumed: its process {owner} stopped during the job ({reason})"
                    db.execute("UPDATE jobs SET owner = ?, heartbeat = ?, phase = 'queued', reason = ?, "
                               "started = started + 1, resumed = resumed + 1 WHERE project = ?",
                               (me, now, why, project))
                    claimed.append((project, why))
                elif pending and not running:
                    db.execute("UPDATE jobs SET running = 1, pending = 0, owner = ?, heartbeat = ?, phase = 'queued', "
                               "started = started + 1 WHERE project = ?", (me, now, project))
                    claimed.append((project, reason or "pending request"))
        return claimed

    # -- reading -------------------------------------------------------------------
    def snapshot(self, project: int) -> dict:
        with self._tx() as db:
            row = self._row(db, project)
        return {"state": "running" if row["running"] else "idle", "phase": row["phase"],
                "pending": bool(row["pending"]), "events_since_request": row["events"],
                "jobs_started": row["started"], "requests_coalesced": row["coalesced"],
                "jobs_resumed": row["resumed"], "last_job": json.loads(row["last"] or "{}"),
                "last_error": row["last_error"], "worker": row["owner"] if row["running"] else None}

    def busy(self, project: int) -> bool:
        with self._tx() as db:
            row = self._row(db, project)
        return bool(row["running"] or row["pending"])
