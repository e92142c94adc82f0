"""One published model version of a project: its model, its scorer and the job's scores (files:
backend.storage.layout).

Weights load on first use (never in the gunicorn master before the fork). A task the
job scored is answered from scores.npz; a task imported after the job is scored with
the same model and s_test, so its score lands on the same scale.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from isal_core.influence.scorer import InfluenceScorer, PoolScores
from isal_core.selection.serving import assign
from isal_core.train.checkpoints import load_checkpoint, read_checkpoint
from isal_core.utils.runtime import resolve_device

from ..labelstudio.score_encoding import score_like
from ..tasktypes import TaskType, task_type_from_meta
from .layout import CENTROIDS, META, MODEL, REVIEW, SCORER, SCORES, VERSION_FILES


def read_scores(path: Path) -> tuple[np.ndarray, np.ndarray, list, list, np.ndarray]:
    """(task ids, influence, predictions, clusters or Nones, served scores) of scores.npz; ValueError for the
    files of an older backend (no served scores): the project's next job replaces the version."""
    with np.load(path) as z:
        if "predictions" not in z or "scores" not in z:
            raise ValueError(f"{path} was written by an older backend (no served scores): retrain the project "
                             "(Start training) to replace this version")
        clusters = z["clusters"].tolist() if "clusters" in z else [None] * len(z["task_ids"])
        return z["task_ids"], z["influence"], [json.loads(p) for p in z["predictions"]], clusters, z["scores"]


def required_files(meta: dict) -> tuple[str, ...]:
    """The files a whole version holds: a cold start has no model, a strategy without influence no scorer."""
    if meta.get("kind") == "cold_start":
        return META, SCORES
    return VERSION_FILES if meta.get("solver_info", True) is not None else (META, MODEL, SCORES)


@dataclass
class ModelVersion:
    path: Path
    meta: dict
    device: str = "auto"
    embedding_cache: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _loaded: dict | None = field(default=None, repr=False)
    _adapter: object = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.meta["version"]

    @property
    def has_model(self) -> bool:
        return self.meta.get("kind") != "cold_start"

    @property
    def task_type(self) -> TaskType:
        return task_type_from_meta(self.meta["task_type"])

    def adapter(self):
        """The engine adapter of this version's model (frozen features: with the backend's embedding cache),
        built once: a frozen backbone is loaded once per version, not per /predict call."""
        if self._adapter is None:
            self._adapter = self._build_adapter()
        return self._adapter

    def _build_adapter(self):
        return self.task_type.adapter_from_meta(self.meta, self.embedding_cache)

    @classmethod
    def open(cls, path: Path, device: str = "auto", verify: bool = False,
             embedding_cache: str | None = None) -> "ModelVersion":
        """Read and check a version dir (all files present, meta parses); ValueError if not.

        `verify` also deserializes the checkpoint, scorer and scores (no model is built,
        so it is safe in the gunicorn master before the fork).
        """
        try:
            meta = json.loads((path / META).read_text())
            for key in ("version", "task_type", "job", "params", "top_k", "arch", "image_size"):
                meta[key]
            task_type_from_meta(meta["task_type"])
        except FileNotFoundError:
            raise ValueError(f"model version {path} is incomplete: missing ['{META}']") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"model version {path} has a bad meta.json: {exc!r}") from None
        missing = [f for f in required_files(meta) if not (path / f).is_file() or (path / f).stat().st_size == 0]
        if missing:
            raise ValueError(f"model version {path} is incomplete: missing {missing}")
        if verify:
            try:
                if (path / MODEL).is_file():
                    read_checkpoint(path / MODEL)  # (no model is built: no weights to load)
                if (path / SCORER).is_file():
                    InfluenceScorer.load(path / SCORER)
                read_scores(path / SCORES)
            except Exception as exc:  # torch, numpy and zipfile raise many kinds
                raise ValueError(f"model version {path} has unreadable files: {type(exc).__name__}: {exc}") from None
        return cls(path, meta, device, embedding_cache)

    def load(self) -> dict:
        """model, scorer and the job's per-task scores, loaded once (thread-safe)."""
        with self._lock:
            if self._loaded is None:
                device = resolve_device(self.device)
                model = load_checkpoint(self.path / MODEL, device, self.adapter())[0] if self.has_model else None
                ids, influences, predictions, clusters, served = read_scores(self.path / SCORES)
                centroids = self.path / CENTROIDS
                scorer = self.path / SCORER
                self._loaded = {
                    "model": model, "device": device, "influences": influences, "served": served,
                    "scorer": InfluenceScorer.load(scorer, top_k=int(self.meta["top_k"])) if scorer.is_file() else None,
                    "scores": {int(t): (float(s), float(i), p, c)
                               for t, s, i, p, c in zip(ids, served, influences, predictions, clusters)},
                    "centroids": torch.load(centroids, weights_only=True) if centroids.is_file() else None,
                }
            return self._loaded

    def predicted_ids(self) -> set[int]:
        """The tasks this version wrote a prediction for: the first `predicted_tasks` of its served order (the
        queue Label Studio serves from); every pool task for a version that did not record it."""
        loaded = self.load()
        if "predicted" not in loaded:
            scores = loaded["scores"]
            ids = sorted(scores, key=lambda t: scores[t][0])
            loaded["predicted"] = set(ids[:self.meta.get("predicted_tasks", len(ids))])
        return loaded["predicted"]

    def cached(self, task_id) -> tuple[float, float, Any, int | None] | None:
        """(served score, influence, prediction, cluster) the job gave this task, if it was in its pool."""
        return self.load()["scores"].get(task_id)

    @property
    def scores_new_tasks(self) -> bool:
        """Whether /predict can score a task the job did not see (a model and an influence scorer)."""
        return self.has_model and self.load()["scorer"] is not None

    def score(self, records, batch_size: int) -> tuple[PoolScores, list]:
        """Influence and predictions for new samples with this version's model and scorer, and their
        clusters (Nones without cluster serving).

        Serialised per version: the scorer patches the shared model with hooks.
        """
        loaded = self.load()
        adapter = self.adapter()
        dataset = adapter.dataset(records)
        with self._lock:
            scores = loaded["scorer"].score(loaded["model"], adapter, dataset, loaded["device"], batch_size)
        if self.meta.get("cluster_source") == "predictions":
            return scores, [adapter.cluster(p) for p in scores.predictions]
        if loaded["centroids"] is None:
            return scores, [None] * len(records)
        return scores, assign(dataset.x, loaded["centroids"]).tolist()

    def encode(self, influences) -> np.ndarray:
        """Scores for new tasks: that of the job's pool task with the nearest influence (score_encoding)."""
        loaded = self.load()
        return score_like(influences, loaded["influences"], loaded["served"])


def save_scores(path: Path, task_ids, influences, predictions, scores, clusters=None) -> None:
    """scores.npz: per task its influence, prediction, served score (its place in the served order) and cluster."""
    extra = {} if clusters is None else {"clusters": np.asarray(clusters, dtype=np.int64)}
    extra["scores"] = np.asarray(scores, dtype=np.float64)
    np.savez(path, task_ids=np.asarray(task_ids, dtype=np.int64), influence=np.asarray(influences, dtype=np.float64),
             predictions=np.asarray([json.dumps(p) for p in predictions], dtype=str), **extra)


def save_review(path: Path, reviewed) -> None:
    """A job's review (backend.job.round.ReviewedTasks) as review.npz."""
    np.savez(path, task_ids=np.asarray(reviewed.task_ids, dtype=np.int64), influence=reviewed.influence,
             loss=reviewed.loss, scores=reviewed.scores,
             annotated=np.asarray([json.dumps(a) for a in reviewed.annotated], dtype=str),
             predictions=np.asarray([json.dumps(p) for p in reviewed.predictions], dtype=str),
             signal=np.asarray(reviewed.signal), **{f"box_{k}": v for k, v in (reviewed.boxes or {}).items()},
             **({"tags": np.asarray([json.dumps(t) for t in reviewed.tags], dtype=str)} if reviewed.tags else {}))


def read_review(version_path: Path, task_type, limit: int | None = None) -> list[dict]:
    """`GET /review`'s tasks from a version's review.npz, most suspicious first."""
    path = version_path / REVIEW
    if not path.is_file():
        return []
    with np.load(path) as z:
        if "box_scores" in z:
            return _read_box_review(z, task_type, limit)
        order = np.argsort(z["scores"], kind="stable")[:limit]
        tags = [_named(json.loads(str(t)), task_type) for t in z["tags"]] if "tags" in z else None
        return [{"task": int(z["task_ids"][i]), "annotated": task_type.label_name(json.loads(str(z["annotated"][i]))),
                 "model": task_type.label_name(json.loads(str(z["predictions"][i]))),
                 "review_score": float(z["scores"][i]), "influence": float(z["influence"][i]),
                 "loss": float(z["loss"][i]), **(tags[i] if tags else {})} for i in order]


def _named(suspects: dict, task_type) -> dict:
    """A tagging review's {"wrong_tag", "missing_tag"}: {"tag": its name, "p": the model's belief} or None."""
    return {f"{k}_tag": s and {"tag": task_type.classes[s["tag"]], "p": s["p"]} for k, s in suspects.items()}


def review_signal(version_path: Path) -> str | None:
    """The signal a version's review ranked by (None: it reviewed nothing)."""
    path = version_path / REVIEW
    if not path.is_file():
        return None
    with np.load(path) as z:
        return str(z["signal"]) if "signal" in z else None


def _read_box_review(z, task_type, limit: int | None) -> list[dict]:
    """Detection's review: the boxes, each with its task, most suspicious first; `model` is the class of
    the model's detection overlapping the box most (None: it detects nothing there)."""
    name = lambda c: None if c < 0 else task_type.label_name({"labels": [int(c)]})[0]  # noqa: E731
    order = np.argsort(z["box_scores"], kind="stable")[:limit]
    return [{"task": int(z["box_task_ids"][i]), "box": int(z["box_index"][i]),
             "annotated": name(z["box_label"][i]), "annotated_box": z["box_box"][i].tolist(),
             "model": name(z["box_model_label"][i]),
             "model_box": None if z["box_model_label"][i] < 0 else z["box_model_box"][i].tolist(),
             "model_score": None if z["box_model_label"][i] < 0 else float(z["box_model_score"][i]),
             "review_score": float(z["box_scores"][i]), "influence": float(z["box_influence"][i]),
             "loss": float(z["box_loss"][i])} for i in order]
