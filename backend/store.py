"""What the backend keeps on disk, per Label Studio project, under MODEL_DIR/<project>/.

    project.json              the labeling config /setup received (a project is "known" once it exists)
    reference_l1.json         the first labeled set, when it stands in for a reference set
    jobs.json                 the last job number used (version names never repeat)
    connection.json           hostname and access token /setup sent (mode 0600), for the job worker,
                              when LABEL_STUDIO_URL / _API_KEY are not set
    unpublished.json          versions whose predictions may be in Label Studio unpublished (backend.unpublished)
    <version>/                one trained model version, written whole or not at all (backend.versions)
    .tmp-<version>/           a version being built; renamed into place when the job succeeds

A version is built in a temp dir and published with os.rename, so a crash never leaves
a half-written version that a restart would load. The newest version whose meta.json
and files are all present is the current one after a restart, and in every process: a
process notices another one's publishing by the project dir's mtime (`refresh`).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from isal_core.atomic import atomic_write, write_json
from isal_core.checkpoints import save_checkpoint
from isal_core.scorer import InfluenceScorer

from .tasktypes import TaskType, parse_label_config, task_type_from_meta
from .versions import VERSION_FILES, ModelVersion, save_scores

log = logging.getLogger(__name__)

_PROJECT_ID = re.compile(r"^\s*(\d+)(?:\.\d+)?\s*$")


class UnknownProject(LookupError):
    """A project that never called /setup on this backend (nothing to predict or train with)."""


def parse_project_id(value: Any) -> int:
    """Label Studio's project reference -> id: "12.1700000000" (/setup, /predict), 12, "12", {"id": 12}."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        raise ValueError(f"not a project id: {value!r}")
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str):
        m = _PROJECT_ID.match(value)
        if m and int(m.group(1)) > 0:
            return int(m.group(1))
    raise ValueError(f"not a Label Studio project reference: {value!r} (expected an id like 12 or \"12.1700000000\")")


def new_version_name(project_id: int, job: int) -> str:
    return f"isal-{project_id}-{job}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"


class ProjectStore:
    """MODEL_DIR/<project>/: registration, reference set fallback, model versions."""

    def __init__(self, root: Path, project_id: int, device: str = "auto", embedding_cache: str | None = None):
        self.root, self.id, self.device, self.embedding_cache = Path(root), project_id, device, embedding_cache
        self._lock = threading.Lock()
        self.current: ModelVersion | None = None
        self.info: dict = {}
        self._seen = None  # the project dir's mtime when versions were last listed

    def register(self, label_config: str, task_type: TaskType) -> None:
        info = {"project": self.id, "label_config": label_config, "task_type": task_type.to_meta(),
                "config_warnings": task_type.config_warnings(), "updated_at": time.time()}
        if info["label_config"] != self.info.get("label_config"):
            write_json(self.root / "project.json", info)
        self.info = info

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
    def load(self) -> "ProjectStore":
        """Read project.json and make the newest good version current."""
        try:
            self.info = json.loads((self.root / "project.json").read_text())
        except FileNotFoundError:
            self.info = {}
        except ValueError as exc:
            log.error("project %s: unreadable %s (%s); run /setup again", self.id, self.root / "project.json", exc)
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

    def refresh(self) -> "ProjectStore":
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
            if not d.is_dir() or d.name.startswith(".") or d.name == "cache":
                continue
            try:
                job = int(json.loads((d / "meta.json").read_text())["job"])
            except (OSError, ValueError, KeyError, TypeError):
                if good_only:
                    continue
                job = -1
            if good_only and any(not (d / f).is_file() for f in VERSION_FILES):
                continue
            found.append((job, d.name))
        return [name for _, name in sorted(found, reverse=True)]

    # -- publishing ------------------------------------------------------------
    def next_job_number(self) -> int:
        """A job number never used before in this project (persisted, survives restarts)."""
        with self._lock:
            counter = self.root / "jobs.json"
            try:
                last = int(json.loads(counter.read_text())["last_job"])
            except (OSError, ValueError, KeyError, TypeError):
                last = 0
            for name in self.versions(good_only=False):
                try:
                    last = max(last, int(json.loads((self.root / name / "meta.json").read_text())["job"]))
                except (OSError, ValueError, KeyError, TypeError):
                    pass
            write_json(counter, {"last_job": last + 1})
            return last + 1

    @contextmanager
    def staging(self, version: str) -> Iterator[Path]:
        """A temp dir for the version's files; renamed into place (and made current) when the
        block ends, removed if it raises."""
        for tmp in self.root.glob(".tmp-*"):  # one job per project at a time: any other is a dead job's
            log.warning("project %s: removing %s left by an interrupted job", self.id, tmp.name)
            shutil.rmtree(tmp, ignore_errors=True)
        path = self.root / f".tmp-{version}"
        path.mkdir(parents=True)
        try:
            yield path
            self.publish(path)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def write_files(self, staging: Path, model, model_meta: dict, scorer: InfluenceScorer, task_ids, influences,
                    predictions, clusters=None) -> None:
        """The model, the scorer, the job's scores (and cluster centroids); meta.json (the mark of a
        whole version) comes last."""
        save_checkpoint(staging / "model.pt", model, model_meta)
        scorer.save(staging / "s_test.pt")
        save_scores(staging / "scores.npz", task_ids, influences, predictions, None if clusters is None else clusters[1])
        if clusters is not None and clusters[0] is not None:
            with atomic_write(staging / "clusters.pt", "wb") as f:
                torch.save(clusters[0], f)

    def write_meta(self, staging: Path, meta: dict) -> None:
        write_json(staging / "meta.json", meta)

    def publish(self, staging: Path) -> ModelVersion:
        """Rename the staging dir into place and make it current."""
        version = ModelVersion.open(staging, self.device, embedding_cache=self.embedding_cache)
        final = self.root / version.name
        if final.exists():
            raise FileExistsError(f"model version {final} already exists")
        os.rename(staging, final)
        self.current = ModelVersion.open(final, self.device, embedding_cache=self.embedding_cache)
        return self.current

    # -- how /setup said to reach Label Studio ----------------------------------
    def save_connection(self, conn: dict) -> None:
        if self.connection() == conn:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".connection.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a Label Studio token: this user only
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(conn, f)
        os.replace(tmp, self.root / "connection.json")

    def connection(self) -> dict:
        try:
            data = json.loads((self.root / "connection.json").read_text())
            return {k: data[k] for k in ("hostname", "access_token") if isinstance(data.get(k), str)}
        except (OSError, ValueError, AttributeError):
            return {}

    # -- reference set fallback ----------------------------------------------
    def first_labeled_set(self, labeled_ids: list[int]) -> tuple[list[int], bool]:
        """The saved first labeled set L1, saving `labeled_ids` as L1 the first time. (ids, created now)."""
        path = self.root / "reference_l1.json"
        try:
            return [int(t) for t in json.loads(path.read_text())["task_ids"]], False
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("project %s: unreadable %s (%s); saving a new first labeled set", self.id, path, exc)
        ids = sorted(int(t) for t in labeled_ids)
        write_json(path, {"task_ids": ids, "saved_at": time.time()})
        return ids, True


class Registry:
    """Every project under MODEL_DIR, loaded lazily by id."""

    def __init__(self, model_dir: str | os.PathLike, device: str = "auto", embedding_cache: str | None = None):
        self.root = Path(model_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.embedding_cache = embedding_cache or str(self.root / "embeddings")
        self._lock = threading.Lock()
        self._projects: dict[int, ProjectStore] = {}
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and d.name.isdigit() and (d / "project.json").is_file():
                self.get(int(d.name))

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def get(self, project_id: int) -> ProjectStore:
        """The project's store, registered or not (/setup registers it)."""
        with self._lock:
            store = self._projects.get(project_id)
            if store is None:
                store = ProjectStore(self.root / str(project_id), project_id, self.device, self.embedding_cache).load()
                self._projects[project_id] = store
            return store

    def known(self, project_id: int) -> ProjectStore:
        """The project's store; UnknownProject if /setup never registered it."""
        with self._lock:
            store = self._projects.get(project_id)
        if store is None and (self.root / str(project_id) / "project.json").is_file():
            store = self.get(project_id)
        if store is not None:
            store.refresh()
        if store is None or not store.info:
            raise UnknownProject(
                f"project {project_id} is not connected to this ML backend: connect it in Label Studio "
                f"(project Settings > Model), which calls /setup with its labeling config")
        return store

    def projects(self) -> list[ProjectStore]:
        with self._lock:
            return [p for _, p in sorted(self._projects.items()) if p.info]
