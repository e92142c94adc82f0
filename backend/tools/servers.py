"""A local Label Studio server: for the demo, the write-back benchmark and integration tests.

`label-studio start` runs in its own process group on a loopback port (free by default)
with SQLite in `data_dir` (or PostgreSQL: backend/tools/postgres.py), so callers talk to the
same server, database and auth code as users do. The first start of a data dir runs the
database migrations (tens of seconds up to minutes on 2 cores); a restart takes seconds.
With a kept data dir the login and token are saved in `data_dir/credentials.json` and
reused on the next start: Label Studio sets the user's token only when it creates the user.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

# Keep the server on loopback and silent towards the internet, let it reach ML
# backends on 127.0.0.1 (blocked since 1.23.1), and serve files from files_root.
_QUIET_LOOPBACK_ENV = {
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
    "USE_DEFAULT_BANNED_SUBNETS": "false",
    "ML_BLOCK_LOCAL_IP": "false",
    "SSRF_PROTECTION_ENABLED": "false",
    "LOCAL_FILES_SERVING_ENABLED": "true",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _label_studio_executable() -> str:
    """The `label-studio` script of this Python's venv, not whatever is on PATH."""
    exe = Path(sys.executable).with_name("label-studio")
    if not exe.exists():
        raise RuntimeError(f"{exe} not found: install requirements-dev.txt into this venv")
    return str(exe)


def stop_group(proc: subprocess.Popen, steps) -> None:
    """Signal a process group step by step (signal, seconds to wait) until its leader exits,
    then SIGKILL whatever of the group is left (children that outlived the leader)."""
    for sig, grace in steps:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ManagedProcess:
    """A server process in its own process group, logging to a file, stopped with the whole group.

    Subclasses give the command (`start`), what "ready" means (`_not_ready`: None when
    ready, else why not) and how to stop (`stop_steps`).
    """

    name = "process"
    stop_steps: tuple = ((signal.SIGTERM, 20), (signal.SIGKILL, 10))
    log_path: Path
    startup_timeout: float

    def _spawn(self, cmd: list[str], env: dict, cwd) -> float:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)
        return time.monotonic()

    def _wait_ready(self, t0: float, poll: float, report_every: float | None = None) -> None:
        """Until `_not_ready()` is None; stops the process and raises if it exits or times out."""
        last_report, why = t0, "no answer yet"
        try:
            while True:
                now = time.monotonic()
                if self._proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with code {self._proc.returncode} during startup:\n"
                                       f"{self.log_tail()}")
                if now - t0 > self.startup_timeout:
                    raise TimeoutError(f"{self.name} not ready after {self.startup_timeout:.0f} s ({why}):\n"
                                       f"{self.log_tail()}")
                why = self._not_ready()
                if why is None:
                    return
                if report_every and now - last_report >= report_every:
                    print(f"[local_ls] waiting for {self.name}: {now - t0:.0f} s ({why})", flush=True)
                    last_report = now
                time.sleep(poll)
        except BaseException:
            self.stop()
            raise

    def _not_ready(self) -> str | None:
        raise NotImplementedError

    def stop(self) -> None:
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is not None:
            stop_group(proc, self.stop_steps)

    def kill(self) -> None:
        """kill -9 the whole group at once, with no chance to clean up (crash tests)."""
        self.stop_steps = ((signal.SIGKILL, 10),)  # (this object's stop, from now on)
        self.stop()

    def running(self) -> bool:
        return getattr(self, "_proc", None) is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if getattr(self, "_proc", None) else None

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n_chars:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LabelStudioServer(ManagedProcess):
    """`with LabelStudioServer() as ls: ls.client().projects.list()`.

    Attributes: url, legacy_token (40 hex, accepted as `Token <key>`: --enable-legacy-api-token), username, password,
    data_dir, files_root (LOCAL_FILES_DOCUMENT_ROOT: a file at files_root/<rel> is served as
    /data/local-files/?d=<rel> once a project has a local storage whose path contains it), log_path.
    """

    name = "label-studio"

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        port: int | None = None,
        startup_timeout: float = 300.0,
        username: str = "isal-test@example.com",
        password: str = "isal-test-password",
        keep_data: bool = False,
        database: dict[str, str] | None = None,
    ):
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="isal-ls-")).resolve()
        self.files_root = self.data_dir / "files"
        self.log_path = self.data_dir / "server.log"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.legacy_token = secrets.token_hex(20)
        self.username = username
        self.password = password
        saved = self.data_dir / "credentials.json"
        if saved.is_file():  # a kept data dir: its user already exists with these
            creds = json.loads(saved.read_text())
            self.username, self.password, self.legacy_token = creds["username"], creds["password"], creds["token"]
        self.startup_timeout = startup_timeout
        self.keep_data, self.database = keep_data, database or {}  # database: PostgresServer.label_studio_env()
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._pat: str | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "LabelStudioServer":
        self.files_root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **_QUIET_LOOPBACK_ENV, "LOCAL_FILES_DOCUMENT_ROOT": str(self.files_root), **self.database}
        # An API key in the test environment must not leak into the server.
        for k in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_URL"):
            env.pop(k, None)
        cmd = [
            _label_studio_executable(), "start",
            "--no-browser",
            "--internal-host", "127.0.0.1",
            "--port", str(self.port),
            "--data-dir", str(self.data_dir / "data"),
            "--username", self.username,
            "--password", self.password,
            "--user-token", self.legacy_token,
            "--enable-legacy-api-token",
        ]
        t0 = self._spawn(cmd, env, self.data_dir)
        print(f"[local_ls] starting Label Studio on {self.url} (pid {self._proc.pid}, log {self.log_path})",
              flush=True)
        self._wait_ready(t0, poll=1, report_every=15)
        self.startup_seconds = time.monotonic() - t0
        if self.keep_data or not self._own_dir:
            creds = self.data_dir / "credentials.json"
            creds.write_text(json.dumps({"username": self.username, "password": self.password,
                                         "token": self.legacy_token}))
            os.chmod(creds, 0o600)
        print(f"[local_ls] ready after {self.startup_seconds:.1f} s", flush=True)
        return self

    def _not_ready(self) -> str | None:
        """Ready = /health is UP *and* the user's token is accepted (the user is created at start)."""
        try:
            r = requests.get(f"{self.url}/health", timeout=5)
            if r.status_code == 200:
                r = requests.get(f"{self.url}/api/current-user/whoami",
                                 headers={"Authorization": f"Token {self.legacy_token}"}, timeout=10)
                if r.status_code == 200:
                    return None
            return f"HTTP {r.status_code} from {r.url}"
        except requests.RequestException as e:
            return type(e).__name__

    def stop(self) -> None:
        """Terminate the whole process group (then kill it if it lingers); drop a throwaway data dir."""
        super().stop()
        if self._own_dir and not self.keep_data and self.data_dir.exists():
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- auth --------------------------------------------------------------
    def personal_token(self) -> str:
        """A personal access token (JWT refresh token) of the test user.

        Created once and cached: the server answers 409 to a second create while a
        token is valid, and lists existing tokens without their signature.
        """
        if self._pat is None:
            self._pat = self.client("legacy").tokens.create().token
        return self._pat

    def token(self, token_kind: str = "legacy") -> str:
        if token_kind == "legacy":
            return self.legacy_token
        if token_kind == "pat":
            return self.personal_token()
        raise ValueError(f"token_kind must be 'legacy' or 'pat', not {token_kind!r}")

    def client(self, token_kind: str = "legacy"):
        """An SDK client authenticated with the legacy token or a personal access token."""
        from label_studio_sdk.client import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token(token_kind))


class BackendProcess(ManagedProcess):
    """The ML backend as users run it: `python -m backend` (gunicorn) in its own process group.

    `env` adds to / overrides this process's environment (LABEL_STUDIO_URL, MODEL_DIR, ISAL_*).
    start() returns once /health answers; stop() ends the whole group (master and workers).
    """

    def __init__(self, env: dict[str, str], port: int | None = None, log_path: str | os.PathLike | None = None,
                 startup_timeout: float = 120.0):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"PYTHONFAULTHANDLER": "1", **os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="isal-backend-")) / "backend.log"
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None

    name = "the backend"
    # SIGTERM: gunicorn's graceful stop (measured 4-7 s here; its quick stop, SIGINT, waited
    # 10 s and more for the worker's idle threads). A running job is abandoned; its temp dir
    # is removed at the next start. A process still there gets SIGABRT, which makes Python's
    # faulthandler (PYTHONFAULTHANDLER, set in __init__) write every thread's stack to the log.
    stop_steps = ((signal.SIGTERM, 20), (signal.SIGABRT, 5), (signal.SIGKILL, 10))

    def start(self) -> "BackendProcess":
        repo = Path(__file__).resolve().parents[2]
        t0 = self._spawn([sys.executable, "-m", "backend"], self.env, repo)
        self._wait_ready(t0, poll=0.3)
        return self

    def _not_ready(self) -> str | None:
        try:
            status = requests.get(f"{self.url}/health", timeout=2).status_code
            return None if status == 200 else f"HTTP {status}"
        except requests.RequestException as e:
            return type(e).__name__
