"""A throwaway PostgreSQL cluster on loopback: for Label Studio on PostgreSQL in tests and benchmarks.

Label Studio's production setups run on PostgreSQL, where deleting predictions does not hold
every other write as SQLite's one writer does. This runs Debian's PostgreSQL 15 binaries
(`make test` installs the `postgresql` package when missing) on a temp data dir and a free port.
PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user the
Debian package creates, and its commands run through `runuser`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from backend.tools.servers import ManagedProcess, free_port

BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


def postgres_bin() -> Path | None:
    """The folder of initdb/postgres/pg_ctl, or None when PostgreSQL is not installed."""
    for d in (os.environ.get("ISAL_PG_BIN", ""), *BIN_DIRS):
        if d and (Path(d) / "initdb").is_file():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer(ManagedProcess):
    """`with PostgresServer() as pg: LabelStudioServer(database=pg.label_studio_env())`.

    Attributes: port, user, password, dbname, data_dir, log_path. stop() ends the server
    (fast shutdown) and removes the cluster; kill() is a crash (kill -9, no checkpoint).
    """

    name = "postgresql"
    # SIGINT is PostgreSQL's fast shutdown: ends sessions, checkpoints, exits.
    stop_steps = ((signal.SIGINT, 20), (signal.SIGQUIT, 5), (signal.SIGKILL, 5))

    def __init__(self, port: int | None = None, startup_timeout: float = 60.0):
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; `make test` does it)")
        self.port = port or free_port()
        self.user, self.dbname = "isal", "labelstudio"
        self.password = secrets.token_hex(12)
        self.dir = Path(tempfile.mkdtemp(prefix="isal-pg-"))
        self.data_dir, self.log_path = self.dir / "data", self.dir / "postgres.log"
        self.startup_timeout = startup_timeout
        self._proc = None
        self._initialised = False

    def _as_owner(self, cmd: list) -> list[str]:
        cmd = [str(c) for c in cmd]
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def _init(self) -> None:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:  # the cluster's files belong to the user that runs it
            for path in (self.dir, pwfile):
                shutil.chown(path, "postgres")
        subprocess.run(self._as_owner([self.bin / "initdb", "-D", self.data_dir, "-U", self.user, "--pwfile", pwfile,
                                       "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pwfile.unlink()
        self._initialised = True

    def start(self) -> "PostgresServer":
        if not self._initialised:
            self._init()
        # Loopback TCP only; the socket in our own folder (not /var/run/postgresql, which may be absent).
        cmd = self._as_owner([self.bin / "postgres", "-D", self.data_dir, "-p", self.port, "-h", "127.0.0.1",
                              "-k", self.dir, "-c", "fsync=off", "-c", "max_connections=200"])
        t0 = self._spawn(cmd, dict(os.environ), self.dir)
        self._wait_ready(t0, poll=0.2)
        self._create_db()
        return self

    def _psql(self, sql: str, db: str = "postgres") -> subprocess.CompletedProcess:
        env = {**os.environ, "PGPASSWORD": self.password}
        return subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                               "-d", db, "-tAc", sql], env=env, capture_output=True, text=True, timeout=30)

    def _create_db(self) -> None:
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.dbname}'").stdout.strip() != "1":
            r = self._psql(f'CREATE DATABASE "{self.dbname}"')
            if r.returncode:
                raise RuntimeError(f"CREATE DATABASE failed: {r.stderr}")

    def _not_ready(self) -> str | None:
        r = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                           capture_output=True, text=True)
        return None if r.returncode == 0 else (r.stdout.strip() or f"pg_isready {r.returncode}")

    def label_studio_env(self) -> dict[str, str]:
        """What Label Studio reads to use this database (its own docker compose sets the same)."""
        return {"DJANGO_DB": "default", "POSTGRE_NAME": self.dbname, "POSTGRE_USER": self.user,
                "POSTGRE_PASSWORD": self.password, "POSTGRE_HOST": "127.0.0.1", "POSTGRE_PORT": str(self.port)}

    def halt(self) -> None:
        """Stop the server (fast shutdown) and keep its data: start() brings it back on the same port."""
        super().stop()

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._initialised = False
