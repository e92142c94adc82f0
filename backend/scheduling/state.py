"""Job state that outlives the process: MODEL_DIR/jobs.sqlite by default, Redis with REDIS_URL.

One row per project: whether a job runs (and which process owns it, with a heartbeat),
whether one waits, the phase, counters and the last outcome. Every change is one
transaction over the rows (SQLite: `BEGIN IMMEDIATE`; Redis: a lock shared by every
client of the server), so "start a job or mark one pending" is atomic across threads,
processes and, with Redis, machines: every web process sees one state and coalescing
holds across them. A job whose owner died (kill -9, OOM, a lost container) is seen as
such: its process is gone (same host), or its heartbeat is older than `stale_after`;
the next sweep claims it and runs it again. Nothing here runs jobs: backend.scheduling.manager does.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TOKENS: dict[int, str] = {}

EMPTY_ROW = {"events": 0, "running": False, "pending": False, "reason": None, "phase": "idle", "progress": None,
             "started": 0, "recent": [],
             "coalesced": 0, "resumed": 0, "last": {}, "last_error": None, "owner": None, "heartbeat": None,
             "retries": 0, "served": {}}


#: Finished jobs kept per project (the project page lists them).
RECENT = 10
#: Times a job whose process died is run again before it is marked failed (a job that kills its process every
#: time, e.g. out of memory, would otherwise be retried forever and hold a worker from other projects).
MAX_RETRIES = 3


def _summary(last: dict) -> dict:
    """What the project page shows of a finished job."""
    keys = ("status", "reason", "started_at", "seconds", "error", "model_version", "kind", "predictions_written")
    out = {k: last[k] for k in keys if k in last}
    out["warnings"] = {k: v.get("count", 0) for k, v in (last.get("warnings") or {}).items()}
    return out


def _given_up(row: dict) -> dict:
    """A job whose process died MAX_RETRIES times after it started, marked failed; one waiting runs next."""
    error = (f"the job stopped its process {MAX_RETRIES + 1} times ({row['reason']}); not run again: look for the "
             "cause (out of memory? the worker's log), then Start training")
    last = {"status": "failed", "reason": row["reason"], "error": error}
    return {**row, "running": False, "owner": None, "heartbeat": None, "phase": "idle", "progress": None,
            "retries": 0, "last": last, "last_error": error, "recent": [*row["recent"][-(RECENT - 1):], _summary(last)]}


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


class SQLiteRows:
    """Rows as JSON in one SQLite table (WAL); a transaction is `BEGIN IMMEDIATE`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # one connection per thread and process (never across a fork)
        with self.transaction() as tx:
            tx.db.execute("CREATE TABLE IF NOT EXISTS job_rows (project INTEGER PRIMARY KEY, row TEXT NOT NULL)")

    def _connection(self) -> sqlite3.Connection:
        if getattr(self._local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid = db, os.getpid()
        return self._local.db

    @contextmanager
    def transaction(self) -> Iterator["_SQLiteTx"]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield _SQLiteTx(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # (also when COMMIT itself failed: the connection is used again)
                db.execute("ROLLBACK")
            raise


class _SQLiteTx:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def get(self, project: int) -> dict:
        found = self.db.execute("SELECT row FROM job_rows WHERE project = ?", (project,)).fetchone()
        return {**EMPTY_ROW, **(json.loads(found[0]) if found else {})}

    def put(self, project: int, row: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO job_rows (project, row) VALUES (?, ?)", (project, json.dumps(row)))

    def all(self) -> dict[int, dict]:
        return {p: {**EMPTY_ROW, **json.loads(r)} for p, r in self.db.execute("SELECT project, row FROM job_rows")}


class RedisRows:
    """Rows as JSON in one Redis hash; a transaction holds a Redis lock (every process, every machine)."""

    def __init__(self, url: str, prefix: str = "isal:jobs"):
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=30)
        self.key, self.lock_key = prefix, f"{prefix}:lock"

    @contextmanager
    def transaction(self) -> Iterator["_RedisTx"]:
        with self.redis.lock(self.lock_key, timeout=30, blocking_timeout=60):
            yield _RedisTx(self.redis, self.key)


class _RedisTx:
    def __init__(self, redis, key: str):
        self.redis, self.key = redis, key

    def get(self, project: int) -> dict:
        found = self.redis.hget(self.key, str(project))
        return {**EMPTY_ROW, **(json.loads(found) if found else {})}

    def put(self, project: int, row: dict) -> None:
        self.redis.hset(self.key, str(project), json.dumps(row))

    def all(self) -> dict[int, dict]:
        return {int(p): {**EMPTY_ROW, **json.loads(r)} for p, r in self.redis.hgetall(self.key).items()}


class JobTable:
    """The job rows of one MODEL_DIR (or one Redis server), and the transitions between their states."""

    def __init__(self, path: str | os.PathLike | None = None, stale_after: float = 60.0, redis_url: str | None = None):
        self.rows = RedisRows(redis_url) if redis_url else SQLiteRows(path)
        self.stale_after = stale_after

    @contextmanager
    def _row(self, project: int) -> Iterator[dict]:
        """The project's row, written back when the block ends."""
        with self.rows.transaction() as tx:
            row = tx.get(project)
            yield row
            tx.put(project, row)

    # -- transitions -------------------------------------------------------------
    def count_event(self, project: int, every: int) -> int:
        """Count an annotation event; the count so far (the caller asks for a job at `every`)."""
        with self._row(project) as row:
            row["events"] += 1
            return row["events"]

    def request(self, project: int, reason: str, claim: bool = True) -> str:
        """"started" (`claim`: the caller now owns the job and must run it), "queued" (not `claim`: a
        worker's sweep takes it), "pending" (one runs: this one waits) or "coalesced" (one waits already)."""
        with self._row(project) as row:
            row["events"] = 0
            if row["pending"]:
                row["coalesced"] += 1
                return "coalesced"
            if row["running"] or not claim:
                row["pending"] = True
                if not row["running"]:
                    row["reason"] = reason
                return "pending" if row["running"] else "queued"
            row.update(running=True, phase="queued", progress=None, reason=reason, started=row["started"] + 1,
                       owner=process_id(), heartbeat=time.time(), retries=0)
            return "started"

    def finish(self, project: int, last: dict, error: str | None) -> str | None:
        """Record the outcome; if a job waits, this process owns it now: its reason, else None."""
        with self._row(project) as row:
            if row["owner"] != process_id():
                return None  # claimed by another process meanwhile (we were thought dead): theirs now
            row.update(last=last, last_error=error, recent=[*row["recent"][-(RECENT - 1):], _summary(last)],
                       retries=0)
            if row["pending"]:
                row.update(pending=False, started=row["started"] + 1, phase="queued", progress=None,
                           reason="pending request", heartbeat=time.time())
                return "pending request"
            row.update(running=False, phase="idle", owner=None, heartbeat=None)
            return None

    def served_labeled(self, project: int, version: str, task_id: int | None = None) -> int:
        """Tasks of `version`'s served queue labeled since it serves (recording `task_id` among them first; without
        one, a read that writes nothing: /status and /metrics ask often)."""
        if task_id is None:
            with self.rows.transaction() as tx:
                served = tx.get(project).get("served") or {}
            return len(served["labeled"]) if served.get("version") == version else 0
        with self._row(project) as row:
            served = row.get("served") or {}
            if served.get("version") != version:
                served = {"version": version, "labeled": []}
            if task_id not in served["labeled"]:
                served["labeled"].append(task_id)
            row["served"] = served
            return len(served["labeled"])

    def update(self, project: int, **fields) -> None:
        """phase / progress / last of a job this process owns (also refreshes its heartbeat)."""
        with self._row(project) as row:
            if row["owner"] == process_id():
                row.update({k: v for k, v in fields.items() if k in ("phase", "progress", "last")},
                           heartbeat=time.time())

    def heartbeat(self) -> None:
        me = process_id()
        with self.rows.transaction() as tx:
            for project, row in tx.all().items():
                if row["owner"] == me:
                    tx.put(project, {**row, "heartbeat": time.time()})

    def claimable(self) -> list[int]:
        """Projects with a job waiting for a worker, or one whose process died."""
        with self.rows.transaction() as tx:
            return [p for p, row in tx.all().items() if self._claimable(row, time.time())]

    def _claimable(self, row: dict, now: float) -> bool:
        if row["running"]:
            return row["owner"] != process_id() and (owner_gone(row["owner"])
                                                     or (row["heartbeat"] or 0) < now - self.stale_after)
        return row["pending"]

    def claim_orphans(self, limit: int | None = None) -> list[tuple[int, str]]:
        """Take over (at most `limit`) jobs whose owner died or that wait with no job running:
        [(project, reason)] to run now."""
        now, me, claimed = time.time(), process_id(), []
        with self.rows.transaction() as tx:
            for project, row in tx.all().items():
                if (limit is not None and len(claimed) >= limit) or not self._claimable(row, now):
                    continue
                if row["running"] and row.get("retries", 0) >= MAX_RETRIES:
                    tx.put(project, _given_up(row))
                    continue
                if row["running"]:
                    why = f"resumed: its process {row['owner']} stopped during the job ({row['reason']})"
                    row.update(reason=why, resumed=row["resumed"] + 1, retries=row.get("retries", 0) + 1)
                else:
                    why = row["reason"] or "pending request"
                    row.update(running=True, pending=False)
                row.update(owner=me, heartbeat=now, phase="queued", progress=None, started=row["started"] + 1)
                tx.put(project, row)
                claimed.append((project, why))
        return claimed

    # -- reading -------------------------------------------------------------------
    def snapshot(self, project: int) -> dict:
        with self.rows.transaction() as tx:
            row = tx.get(project)
        return {"state": "running" if row["running"] else "idle", "phase": row["phase"],
                "progress": row["progress"] if row["running"] else None,
                "pending": bool(row["pending"]), "events_since_request": row["events"],
                "jobs_started": row["started"], "requests_coalesced": row["coalesced"],
                "jobs_resumed": row["resumed"], "last_job": row["last"], "last_error": row["last_error"],
                "recent_jobs": row["recent"],
                "worker": row["owner"] if row["running"] else None}

    def busy(self, project: int) -> bool:
        with self.rows.transaction() as tx:
            row = tx.get(project)
        return bool(row["running"] or row["pending"])
