"""What the backend keeps on disk, per Label Studio project, under MODEL_DIR/<project>/.

    project.json              the labeling config /setup received (a project is "known" once it exists)
    reference_l1.json         the first labeled set, when it stands in for a reference set
    <version>/                one trained model version, written whole or not at all:
        meta.json             task type, classes, from/to names, sigma, counts, engine settings
        model.pt              classifier checkpoint (isal_core.training format)
        s_test.pt             s_test and the name of the parameter set it is taken over
        scores.npz            task ids scored by the job, their influence and predicted output
    .tmp-<version>/           a version being built; renamed into place when the job succeeds

A version is built in a temp dir and published with os.rename, so a crash never leaves
a half-written version that a restart would load. The newest version whose meta.json
and files are all present is the current one after a restart.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from isal_core.gradients import eval_mode
from isal_core.params import select_parameters
from isal_core.scoring import influence
from isal_core.training import load_checkpoint, resolve_device, save_checkpoint

from .scores import encode
from .tasktypes import TaskType, parse_label_config, task_type_from_meta

log = logging.getLogger(__name__)

VERSION_FILES = ("meta.json", "model.pt", "s_test.pt", "scores.npz")
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


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def score_samples(model, task_type: TaskType, dataset, s_test: torch.Tensor, params_name, top_k: int,
                  device, batch_size: int) -> tuple[np.ndarray, list]:
    """(influence per sample, model output per sample) for a dataset of (x, y, index) items."""
    device = resolve_device(device)
    params = select_parameters(model, params_name)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    values = influence(model, task_type.adapter(), loader, s_test.to(device), params, top_k, device,
                       num_samples=len(dataset))
    outputs: list = []
    with eval_mode(model):
        for x, _, _ in loader:
            outputs.extend(task_type.outputs(model, x.to(device)))
    return values.double().numpy(), outputs


@dataclass
class ModelVersion:
    """One published model version; its weights load on first use (not in the gunicorn master)."""

    path: Path
    meta: dict
    device: str = "auto"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _loaded: dict | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.meta["version"]

    @property
    def sigma(self) -> float:
        return float(self.meta["sigma"])

    @property
    def task_type(self) -> TaskType:
        return task_type_from_meta(self.meta["task_type"])

    @classmethod
    def open(cls, path: Path, device: str = "auto", verify: bool = False) -> "ModelVersion":
        """Read and check a version dir (all files present, meta parses); ValueError if not.

        `verify` also deserializes the checkpoint, s_test and scores (no model is built,
        so it is safe in the gunicorn master before the fork).
        """
        missing = [f for f in VERSION_FILES if not (path / f).is_file() or (path / f).stat().st_size == 0]
        if missing:
            raise ValueError(f"model version {path} is incomplete: missing {missing}")
        try:
            meta = json.loads((path / "meta.json").read_text())
            for key in ("version", "sigma", "task_type", "job", "params", "top_k"):
                meta[key]
            task_type_from_meta(meta["task_type"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"model version {path} has a bad meta.json: {exc!r}") from None
        if verify:
            try:
                torch.load(path / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
                torch.load(path / "s_test.pt", map_location="cpu", weights_only=True)["s_test"]
                with np.load(path / "scores.npz") as z:
                    z["task_ids"], z["influence"], z["output"]
            except Exception as exc:
                raise ValueError(f"model version {path} has unreadable files: {type(exc).__name__}: {exc}") from None
        return cls(path, meta, device)

    def load(self) -> dict:
        """model, s_test and the job's per-task scores, loaded once (thread-safe)."""
        with self._lock:
            if self._loaded is None:
                device = resolve_device(self.device)
                model, _ = load_checkpoint(self.path / "model.pt", device)
                blob = torch.load(self.path / "s_test.pt", map_location="cpu", weights_only=True)
                with np.load(self.path / "scores.npz") as z:
                    ids, infl, out = z["task_ids"], z["influence"], z["output"]
                self._loaded = {
                    "model": model, "s_test": blob["s_test"], "device": device,
                    "scores": {int(t): (float(i), o.item() if hasattr(o, "item") else o)
                               for t, i, o in zip(ids, infl, out)},
                }
            return self._loaded

    def cached(self, task_id) -> tuple[float, Any] | None:
        """(influence, output) the job computed for this task, if it was in its pool."""
        return self.load()["scores"].get(task_id)

    def score(self, dataset, batch_size: int) -> tuple[np.ndarray, list]:
        """Influence and outputs for new samples with this version's model and s_test.

        Serialised per version: the scorer patches the shared model with hooks.
        """
        loaded = self.load()
        with self._lock:
            return score_samples(loaded["model"], self.task_type, dataset, loaded["s_test"], self.meta["params"],
                                 int(self.meta["top_k"]), loaded["device"], batch_size)

    def encode(self, influences) -> np.ndarray:
        return encode(influences, self.sigma)


class ProjectStore:
    """MODEL_DIR/<project>/: registration, reference set fallback, model versions."""

    def __init__(self, root: Path, project_id: int, device: str = "auto"):
        self.root, self.id, self.device = Path(root), project_id, device
        self._lock = threading.Lock()
        self.current: ModelVersion | None = None
        self.info: dict = {}

    @property
    def registered(self) -> bool:
        return (self.root / "project.json").is_file()

    def register(self, label_config: str, task_type: TaskType) -> None:
        info = {"project": self.id, "label_config": label_config, "task_type": task_type.to_meta(),
                "updated_at": time.time()}
        if info["label_config"] != self.info.get("label_config"):
            write_json_atomic(self.root / "project.json", info)
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
        """Read project.json and make the newest good version current; drop leftover temp dirs."""
        try:
            self.info = json.loads((self.root / "project.json").read_text())
        except FileNotFoundError:
            self.info = {}
        except ValueError as exc:
            log.error("project %s: unreadable %s (%s); run /setup again", self.id, self.root / "project.json", exc)
            self.info = {}
        for tmp in self.root.glob(".tmp-*"):
            log.warning("project %s: removing %s left by an interrupted job", self.id, tmp.name)
            shutil.rmtree(tmp, ignore_errors=True)
        self.current = None
        for version in self.versions(good_only=False):
            try:
                self.current = ModelVersion.open(self.root / version, self.device, verify=True)
                break
            except ValueError as exc:
                log.warning("project %s: skipping model version %s: %s", self.id, version, exc)
        if self.current is not None:
            log.info("project %s: loaded model version %s", self.id, self.current.name)
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
            write_json_atomic(counter, {"last_job": last + 1})
            return last + 1

    def staging_dir(self, version: str) -> Path:
        path = self.root / f".tmp-{version}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def write_version(self, staging: Path, model, meta: dict, s_test: torch.Tensor,
                      task_ids, influences, outputs) -> None:
        """All files of a version into its staging dir; meta.json last."""
        save_checkpoint(staging / "model.pt", model, {"arch": meta["arch"], "num_classes": meta["num_classes"],
                                                      "version": meta["version"]})
        torch.save({"s_test": s_test.detach().cpu(), "params": meta["params"]}, staging / "s_test.pt")
        np.savez(staging / "scores.npz", task_ids=np.asarray(task_ids, dtype=np.int64),
                 influence=np.asarray(influences, dtype=np.float64), output=np.asarray(outputs))
        write_json_atomic(staging / "meta.json", meta)

    def publish(self, staging: Path) -> ModelVersion:
        """Rename the staging dir into place and make it current."""
        version = ModelVersion.open(staging, self.device)
        final = self.root / version.name
        if final.exists():
            raise FileExistsError(f"model version {final} already exists")
        os.rename(staging, final)
        self.current = ModelVersion.open(final, self.device)
        return self.current

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
        write_json_atomic(path, {"task_ids": ids, "saved_at": time.time()})
        return ids, True


class Registry:
    """Every project under MODEL_DIR, loaded lazily by id."""

    def __init__(self, model_dir: str | os.PathLike, device: str = "auto"):
        self.root = Path(model_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.device = device
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
                store = ProjectStore(self.root / str(project_id), project_id, self.device).load()
                self._projects[project_id] = store
            return store

    def known(self, project_id: int) -> ProjectStore:
        """The project's store; UnknownProject if /setup never registered it."""
        with self._lock:
            store = self._projects.get(project_id)
        if store is None and (self.root / str(project_id) / "project.json").is_file():
            store = self.get(project_id)
        if store is None or not store.info:
            raise UnknownProject(
                f"project {project_id} is not connected to this ML backend: connect it in Label Studio "
                f"(project Settings > Model), which calls /setup with its labeling config")
        return store

    def projects(self) -> list[ProjectStore]:
        with self._lock:
            return [p for _, p in sorted(self._projects.items()) if p.info]
