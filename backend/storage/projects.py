"""A project's folder under MODEL_DIR, and MODEL_DIR itself: what the backend keeps per Label Studio project.

`ProjectDir` is MODEL_DIR/<project>/ (the names: backend.storage.layout): the labeling
config /setup sent, the first labeled set when it stands in for R, the job counter, the
connection /setup sent, and the published model versions, the newest complete one being
current. It reads versions; it never writes one: a version is built in a staging folder
and renamed into place by the job's publication (backend.job.publication), so a crash
never leaves a half-written version that a restart would load. Every process notices
another one's publishing by the project folder's mtime (`refresh`).
`ModelDir` is every project under MODEL_DIR, loaded lazily by id.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from isal_core.utils.atomic import write_json

from ..errors import UnknownProject
from ..tasktypes import TaskType, parse_label_config, task_type_from_meta
from .layout import (
    CONNECTION,
    EMBEDDING_CACHE,
    HISTORY,
    IMAGE_CACHE,
    JOB_COUNTER,
    META,
    PROJECT,
    REFERENCE_L1,
)
from .servers import Servers, label_studio_id
from .versions import ModelVersion, required_files

log = logging.getLogger(__name__)

def new_version_name(project_id: int, job: int) -> str:
    return f"isal-{project_id}-{job}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"


class ProjectDir:
    """MODEL_DIR/<project>/: registration, reference set fallback, model versions."""

    def __init__(self, root: Path, project_id: int, device: str = "auto", embedding_cache: str | None = None):
        self.root, self.id, self.device, self.embedding_cache = Path(root), project_id, device, embedding_cache
        self._lock = threading.Lock()
        self.current: ModelVersion | None = None
        self.info: dict = {}
        self._seen = None  # the project dir's mtime when versions were last listed

    @property
    def ls_id(self) -> int:
        """The id Label Studio knows the project by (its key differs for a second server's: backend.storage.servers)."""
        return label_studio_id(self.id)

    def register(self, label_config: str, task_type: TaskType, warnings: list[str] = (),
                 created: int | None = None) -> bool:
        """Save the labeling config /setup sent (and what to warn of, and the second Label Studio created the
        project: it tells servers apart); True the first time this project is."""
        info = {"project": self.id, "label_config": label_config, "task_type": task_type.to_meta(),
                "config_warnings": task_type.config_warnings() + list(warnings), "updated_at": time.time(),
                "label_studio_created": created or self.info.get("label_studio_created")}
        new = not self.info
        if any(info[k] != self.info.get(k) for k in ("label_config", "config_warnings", "label_studio_created")):
            write_json(self.root / PROJECT, info)
        self.info = info
        return new

    def task_type(self) -> TaskType:
        return task_type_from_meta(self.info["task_type"])

    def update_config(self, label_config: str) -> TaskType:
        """Re-parse when Label Studio sends a changed config (UnsupportedConfig if it is no longer usable)."""
        if label_config and label_config != self.info.get("label_config"):
            task_type = parse_label_config(label_config)
            self.register(label_config, task_type)
            return task_type
        return self.task_type()

    # -- loading -------------------------------------------------------------
    def load(self) -> "ProjectDir":
        """Read project.json and make the newest good version current."""
        try:
            self.info = json.loads((self.root / PROJECT).read_text())
        except FileNotFoundError:
            self.info = {}
        except ValueError as exc:
            log.error("project %s: unreadable %s (%s); run /setup again", self.id, self.root / PROJECT, exc)
            self.info = {}
        self.current = None  # (temp dirs of interrupted jobs are ignored; the project's next job removes them)
        self._pick_current()
        if self.current is not None:
            log.info("project %s: loaded model version %s", self.id, self.current.name)
        return self

    def _pick_current(self) -> None:
        self._seen = self._mtime()
        for version in self.versions(good_only=False):
            if self.current is not None and version == self.current.name:
                return
            try:
                self.current = ModelVersion.open(self.root / version, self.device, True, self.embedding_cache)
                return
            except ValueError as exc:
                log.warning("project %s: skipping model version %s: %s", self.id, version, exc)

    def _mtime(self) -> int | None:
        try:
            return os.stat(self.root).st_mtime_ns
        except OSError:
            return None

    def refresh(self) -> "ProjectDir":
        """Take up a version another process published (one stat when nothing changed)."""
        if self._mtime() != self._seen:
            with self._lock:
                if self._mtime() != self._seen:
                    self._pick_current()
        return self

    def versions(self, good_only: bool = True) -> list[str]:
        """Version dir names, newest first (by job number, then name)."""
        found = []
        for d in self.root.iterdir() if self.root.is_dir() else []:
            if not d.is_dir() or d.name.startswith(".") or d.name == IMAGE_CACHE:
                continue
            try:
                meta = json.loads((d / META).read_text())
                job = int(meta["job"])
            except (OSError, ValueError, KeyError, TypeError):
                if good_only:
                    continue
                meta, job = {}, -1
            if good_only and any(not (d / f).is_file() for f in required_files(meta)):
                continue
            found.append((job, d.name))
        return [name for _, name in sorted(found, reverse=True)]

    # -- publishing ------------------------------------------------------------
    def next_job_number(self) -> int:
        """A job number never used before in this project (persisted, survives restarts)."""
        with self._lock:
            counter = self.root / JOB_COUNTER
            try:
                last = int(json.loads(counter.read_text())["last_job"])
            except (OSError, ValueError, KeyError, TypeError):
                last = 0
            for name in self.versions(good_only=False):
                try:
                    last = max(last, int(json.loads((self.root / name / META).read_text())["job"]))
                except (OSError, ValueError, KeyError, TypeError):
                    pass
            write_json(counter, {"last_job": last + 1})
            return last + 1

    def adopt(self, path: Path) -> ModelVersion:
        """Make the version just renamed into `path` current (the publication's last step on disk)."""
        self.current = ModelVersion.open(path, self.device, embedding_cache=self.embedding_cache)
        return self.current

    # -- the project's history: one line per published version (its folder may be pruned) ---------------
    def append_history(self, meta: dict) -> None:
        metric = meta.get("reference_metric") or {}
        line = {"version": meta.get("version"), "job": meta.get("job"), "kind": meta.get("kind", "round"),
                "strategy": meta.get("strategy"), "created_at": meta.get("created_at"),
                "labeled": (meta.get("counts") or {}).get("labeled"), "metric": metric.get("value"),
                "metric_name": metric.get("name"), "metric_on": metric.get("on")}
        with open(self.root / HISTORY, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def history(self) -> list[dict]:
        """Every published version's (labels, metric on R), oldest first; unreadable lines are skipped."""
        try:
            lines = (self.root / HISTORY).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    # -- how /setup said to reach Label Studio ----------------------------------
    def save_connection(self, conn: dict) -> None:
        if self.connection() == conn:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".connection.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a Label Studio token: this user only
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(conn, f)
        os.replace(tmp, self.root / CONNECTION)

    def connection(self) -> dict:
        try:
            data = json.loads((self.root / CONNECTION).read_text())
            return {k: data[k] for k in ("hostname", "access_token") if isinstance(data.get(k), str)}
        except (OSError, ValueError, AttributeError):
            return {}

    # -- reference set fallback ----------------------------------------------
    def first_labeled_set(self, labeled_ids: list[int]) -> tuple[list[int], bool]:
        """The saved first labeled set L1, saving `labeled_ids` as L1 the first time. (ids, created now)."""
        path = self.root / REFERENCE_L1
        try:
            return [int(t) for t in json.loads(path.read_text())["task_ids"]], False
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("project %s: unreadable %s (%s); saving a new first labeled set", self.id, path, exc)
        ids = sorted(int(t) for t in labeled_ids)
        write_json(path, {"task_ids": ids, "saved_at": time.time()})
        return ids, True


class ModelDir:
    """Every project under MODEL_DIR, loaded lazily by id."""

    def __init__(self, model_dir: str | os.PathLike, device: str = "auto", embedding_cache: str | None = None):
        self.root = Path(model_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.embedding_cache = embedding_cache or str(self.root / EMBEDDING_CACHE)
        self.servers = Servers(self.root)
        self._lock = threading.Lock()
        self._projects: dict[int, ProjectDir] = {}
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and d.name.isdigit() and (d / PROJECT).is_file():
                self.get(int(d.name))

    @property
    def cache_dir(self) -> Path:
        return self.root / IMAGE_CACHE

    def get(self, project_id: int) -> ProjectDir:
        """The project's folder, registered or not (/setup registers it)."""
        with self._lock:
            project = self._projects.get(project_id)
            if project is None:
                project = ProjectDir(self.root / str(project_id), project_id, self.device, self.embedding_cache).load()
                self._projects[project_id] = project
            return project

    def known(self, project_id: int) -> ProjectDir:
        """The project's folder; UnknownProject if /setup never registered it."""
        with self._lock:
            project = self._projects.get(project_id)
        if project is None and (self.root / str(project_id) / PROJECT).is_file():
            project = self.get(project_id)
        if project is not None:
            project.refresh()
        if project is None or not project.info:
            raise UnknownProject(
                f"project {project_id} is not connected to this ML backend: connect it in Label Studio "
                f"(project Settings > Model), which calls /setup with its labeling config")
        return project

    def projects(self) -> list[ProjectDir]:
        with self._lock:
            return [p for _, p in sorted(self._projects.items()) if p.info]
