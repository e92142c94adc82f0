"""Training jobs: when they run (JobManager) and what they do (Trainer).

When: START_TRAINING always asks for a job; ANNOTATION_CREATED / ANNOTATION_UPDATED /
ANNOTATIONS_DELETED ask for one every ISAL_RETRAIN_EVERY events. The webhook returns
at once; a job runs on a background thread, and requests coalesce: per project at most
one job runs and one waits, however many events arrive meanwhile (the waiting job reads
the project afresh when it starts, so it sees every annotation made before then).
Jobs of different projects take turns (one CPU-heavy job at a time per process).

What (one job = one ISAL round on the project as it is now):
 1. pull every task with its annotations (ls_client.iter_tasks);
 2. labeled set = tasks whose latest non-cancelled annotation carries a label of the
    config; reference set R = labeled tasks with data["isal_reference"] true (never
    trained on, never in the pool); without any, R = the first labeled set L1, saved
    the first time (the paper's ISAL_v2 ablation) and reported as such;
    pool = tasks without a non-cancelled annotation (and not flagged as reference);
 3. download their images (cached under MODEL_DIR/cache; 404s and undecodable files
    are skipped and counted, a refused API key fails the job);
 4. train from scratch (seeded), s_test = (H + damping I)^-1 grad l(R), influence of
    every pool task, score = sigmoid(I / sigma) (see backend.scores);
 5. write one prediction per pool task with a new model_version, point the project at
    it with "Uncertainty sampling", then publish the version on disk.
A job that fails anywhere leaves the current version, and the project's model_version in
Label Studio, as they were (predictions it wrote before failing stay, under a version
nothing points at).
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from isal_core.data import ImageDecodeError, ImageRecord, open_image
from isal_core.strategies import SelectionContext, make_strategy
from isal_core.training import TrainConfig, resolve_device, seed_everything, train_classifier

from .ls_client import ApiError, DownloadError, LabelStudioAPI
from .scores import encode, influence_scale
from .settings import EngineSettings
from .tasktypes import LabelError, MissingMedia, TaskType, UnsupportedConfig
from .versions import ProjectStore, score_samples

log = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
TRAIN_EVENT = "START_TRAINING"
REFERENCE_FLAG = "isal_reference"
MAX_EXAMPLES = 5  # example task ids kept per warning kind


class JobError(RuntimeError):
    """A job cannot go on; the message is what the user reads in /status and the log."""


# ---------------------------------------------------------------------------
# when jobs run


@dataclass
class ProjectJobs:
    running: bool = False
    pending: bool = False
    phase: str = "idle"
    events: int = 0
    started: int = 0
    coalesced: int = 0
    last: dict = field(default_factory=dict)
    last_error: str | None = None
    done: threading.Condition = field(default_factory=threading.Condition)

    def snapshot(self) -> dict:
        state = "running" if self.running else "idle"
        return {"state": state, "phase": self.phase, "pending": self.pending, "events_since_request": self.events,
                "jobs_started": self.started, "requests_coalesced": self.coalesced, "last_job": dict(self.last),
                "last_error": self.last_error}


class JobManager:
    """Coalescing per-project job runner. `run_job(project_id, set_phase) -> report dict`."""

    def __init__(self, run_job: Callable[[int, Callable[[str], None]], dict], retrain_every: int):
        self.run_job = run_job
        self.retrain_every = retrain_every
        self._lock = threading.Lock()
        self._compute = threading.Lock()  # one CPU-heavy job at a time in this process
        self._projects: dict[int, ProjectJobs] = {}

    def _state(self, project_id: int) -> ProjectJobs:
        return self._projects.setdefault(project_id, ProjectJobs())

    def annotation_event(self, project_id: int) -> str:
        """Count an annotation event; ask for a job every `retrain_every` of them."""
        with self._lock:
            st = self._state(project_id)
            st.events += 1
            if not self.retrain_every or st.events < self.retrain_every:
                return f"counted ({st.events}/{self.retrain_every or 'never'} toward a retrain)"
        return self.request(project_id, f"{self.retrain_every} annotation events")

    def request(self, project_id: int, reason: str) -> str:
        """Start a job, or mark one pending behind the running one (at most one waits)."""
        with self._lock:
            st = self._state(project_id)
            st.events = 0
            if st.running:
                if st.pending:
                    st.coalesced += 1
                    return "coalesced into the pending job"
                st.pending = True
                return "pending after the running job"
            st.running = True
            st.phase = "queued"
            st.started += 1
        threading.Thread(target=self._loop, args=(project_id, reason), daemon=True,
                         name=f"isal-job-{project_id}").start()
        return "started"

    def _loop(self, project_id: int, reason: str) -> None:
        while True:
            self._run_once(project_id, reason)
            with self._lock:
                st = self._state(project_id)
                if st.pending:
                    st.pending = False
                    st.started += 1
                    st.phase = "queued"
                    reason = "pending request"
                    continue
                st.running = False
                st.phase = "idle"
            with st.done:
                st.done.notify_all()
            return

    def _run_once(self, project_id: int, reason: str) -> None:
        st = self._state(project_id)

        def set_phase(phase: str) -> None:
            st.phase = phase

        t0 = time.time()
        st.last = {"status": "running", "reason": reason, "started_at": t0}
        with self._compute:
            try:
                log.info("project %s: job started (%s)", project_id, reason)
                report = self.run_job(project_id, set_phase) or {}
                st.last = {**report, "status": "done", "reason": reason, "started_at": t0,
                           "seconds": round(time.time() - t0, 2)}
                st.last_error = None
                log.info("project %s: job done in %.1f s: %s", project_id, time.time() - t0,
                         {k: report.get(k) for k in ("model_version", "counts", "warnings")})
            except Exception as exc:  # a failed job must not take the server down
                message = str(exc) if isinstance(exc, (JobError, UnsupportedConfig)) else f"{type(exc).__name__}: {exc}"
                st.last = {"status": "failed", "reason": reason, "started_at": t0, "error": message,
                           "seconds": round(time.time() - t0, 2)}
                st.last_error = message
                log.error("project %s: job failed, keeping the current model: %s", project_id, message,
                          exc_info=not isinstance(exc, (JobError, UnsupportedConfig)))

    def snapshot(self, project_id: int) -> dict:
        with self._lock:
            return self._state(project_id).snapshot()

    def wait_idle(self, project_id: int, timeout: float) -> bool:
        """Block until no job runs or waits for the project (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        st = self._state(project_id)
        with st.done:
            while st.running or st.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                st.done.wait(min(left, 0.5))
        return True


# ---------------------------------------------------------------------------
# what a job does


@dataclass
class Item:
    task_id: int
    url: str
    label: Any = None
    path: Path | None = None


class Warnings:
    """Counted per kind, with a few example task ids each, for /status and the log."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: dict[str, list] = {}

    def add(self, kind: str, task_id, detail: str) -> None:
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"task {task_id}: {detail}")

    def as_dict(self) -> dict:
        return {k: {"count": n, "examples": self.examples.get(k, [])} for k, n in sorted(self.counts.items())}


def latest_annotation(task: dict) -> dict | None:
    """The task's most recent non-cancelled (not skipped) annotation, or None."""
    live = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not live:
        return None
    return max(live, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0))


def is_reference(task: dict) -> bool:
    flag = (task.get("data") or {}).get(REFERENCE_FLAG)
    return flag is True or (isinstance(flag, str) and flag.strip().lower() in ("true", "1", "yes")) or flag == 1


def new_version_name(project_id: int, job: int) -> str:
    return f"isal-{project_id}-{job}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"


class Trainer:
    """Runs one job for a project (see the module docstring)."""

    def __init__(self, engine: EngineSettings, cache_dir: Path, api_for: Callable[[int], LabelStudioAPI]):
        self.engine = engine
        self.cache_dir = Path(cache_dir)
        self.api_for = api_for

    def run(self, store: ProjectStore, set_phase: Callable[[str], None] = lambda p: None) -> dict:
        try:
            return self._run(store, set_phase)
        except ApiError as exc:
            raise JobError(describe_api_error(exc)) from None

    def _run(self, store: ProjectStore, set_phase: Callable[[str], None]) -> dict:
        e = self.engine
        pid = store.id
        api = self.api_for(pid)
        warnings = Warnings()
        t = {"start": time.time()}

        set_phase("reading tasks")
        try:
            task_type = store.update_config(api.project_label_config(pid))
        except UnsupportedConfig as exc:
            raise JobError(f"the project's labeling config is not supported: {exc}") from None
        labeled, reference, pool, flagged_unlabeled = self._split(api, pid, task_type, warnings)
        t["read"] = time.time()

        set_phase("downloading images")
        self._download(api, labeled + reference + pool, warnings)
        labeled = [i for i in labeled if i.path]
        reference = [i for i in reference if i.path]
        pool = [i for i in pool if i.path]
        t["download"] = time.time()

        if len(labeled) < e.min_labeled:
            raise JobError(f"need at least {e.min_labeled} labeled tasks with a usable image to train, have "
                           f"{len(labeled)} (skipped: {dict(warnings.counts) or 'none'})")
        reference_source = REFERENCE_FLAG
        reference_note = f"{len(reference)} labeled tasks flagged \"{REFERENCE_FLAG}\": true"
        if not reference:
            l1, created = store.first_labeled_set([i.task_id for i in labeled])
            in_l1 = set(l1)
            reference = [i for i in labeled if i.task_id in in_l1]
            reference_source = "first_labeled_set"
            reference_note = (f"no labeled task is flagged \"{REFERENCE_FLAG}\": true, so the reference set is the "
                              f"first labeled set L1 ({len(reference)} of its {len(l1)} tasks usable), saved "
                              f"{'now' if created else 'by an earlier job'} in reference_l1.json; it is also "
                              "trained on. Flag a labeled, representative set for better selection.")
            (log.warning if created else log.info)(
                "project %s: no labeled task has data.%s = true; the reference set is the first labeled set "
                "L1 (%d tasks%s). Flag a labeled, representative set with \"%s\": true for better selection.",
                pid, REFERENCE_FLAG, len(reference), ", saved now" if created else "", REFERENCE_FLAG)
        counts = {"labeled": len(labeled), "reference": len(reference), "unlabeled": len(pool),
                  "reference_unlabeled": flagged_unlabeled, "skipped": int(sum(warnings.counts.values()))}
        if not reference:
            raise JobError("the reference set is empty: no labeled task is flagged "
                           f"\"{REFERENCE_FLAG}\": true and none of the first labeled set L1 is usable")
        if not pool:
            raise JobError("no unlabeled task with a usable image is left to rank")

        set_phase("training")
        device = resolve_device(e.device)
        seed_everything(e.seed)  # the model's initial weights too
        model = task_type.build_model(e.arch)
        train_ds = task_type.dataset(_records(labeled), e.image_size, train=True)
        train_classifier(model, train_ds, TrainConfig(epochs=e.epochs, lr=e.lr, batch_size=e.batch_size,
                                                      seed=e.seed, device=str(device)), progress=False)
        t["train"] = time.time()

        set_phase("computing s_test")
        strategy = make_strategy(e.strategy, seed=e.seed, solver=e.solver, params=e.params, top_k=e.top_k,
                                 reference="given", hessian_samples=e.hessian_samples, damping=e.damping,
                                 max_iter=e.cg_iters)
        ctx = SelectionContext(model=model, adapter=task_type.adapter(),
                               pool=task_type.dataset(_records(pool), e.image_size, train=False),
                               labeled=task_type.dataset(_records(labeled), e.image_size, train=False),
                               reference=task_type.dataset(_records(reference), e.image_size, train=False),
                               device=device, batch_size=e.batch_size)
        solved = strategy.s_test(ctx)
        t["s_test"] = time.time()

        set_phase("scoring the pool")
        influences, outputs = score_samples(model, task_type, ctx.pool, solved.s_test, e.params, e.top_k,
                                            device, e.batch_size)
        sigma = influence_scale(influences)
        scores = encode(influences, sigma)
        top = int(np.argmin(influences))
        t["score"] = time.time()

        job = store.next_job_number()
        version = new_version_name(pid, job)
        task_ids = [i.task_id for i in pool]
        meta = {
            "version": version, "project": pid, "job": job, "created_at": time.time(),
            "task_type": task_type.to_meta(), "arch": e.arch, "num_classes": len(getattr(task_type, "classes", [])),
            "image_size": e.image_size, "strategy": e.strategy, "solver": e.solver, "damping": e.damping,
            "params": e.params, "top_k": e.top_k, "epochs": e.epochs, "seed": e.seed,
            "solver_info": {k: v for k, v in solved.info.items() if k != "norms"},
            "sigma": sigma, "counts": counts, "reference_source": reference_source, "reference_note": reference_note,
            "top_task": task_ids[top], "top_score": float(scores[top]), "top_influence": float(influences[top]),
            "warnings": warnings.as_dict(),
        }
        staging = store.staging_dir(version)
        try:
            store.write_version(staging, model, meta, solved.s_test, task_ids, influences, outputs)

            set_phase("writing predictions")
            created = write_back(api, pid, version, prediction_stream(task_type, version, task_ids, outputs, scores))
            if created < len(task_ids):
                warnings.add("predictions_dropped", "-", f"Label Studio kept {created} of {len(task_ids)} predictions")
                meta["warnings"] = warnings.as_dict()
            if created == 0:
                raise JobError(f"Label Studio kept none of the {len(task_ids)} predictions of {version}")
            published = store.publish(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        t["write"] = time.time()
        for kind, info in warnings.as_dict().items():
            log.warning("project %s: %d task(s) skipped or degraded (%s), e.g. %s", pid, info["count"], kind,
                        "; ".join(info["examples"]))
        return {
            "model_version": published.name, "counts": counts, "warnings": warnings.as_dict(),
            "reference_source": reference_source, "reference_note": reference_note,
            "top_task": meta["top_task"], "top_score": meta["top_score"],
            "sigma": sigma, "predictions_written": created, "solver_info": meta["solver_info"],
            "timings_s": {k: round(t[k] - t[p], 2) for p, k in zip(
                ["start", "read", "download", "train", "s_test", "score"],
                ["read", "download", "train", "s_test", "score", "write"])},
        }

    def _split(self, api, pid, task_type: TaskType, warnings: Warnings):
        """(labeled, reference, pool, flagged-but-unlabeled count) from every task of the project."""
        labeled, reference, pool = [], [], []
        flagged_unlabeled = 0
        for task in api.iter_tasks(pid):
            tid = task["id"]
            try:
                url = task_type.media_url(task)
            except MissingMedia as exc:
                warnings.add("no_image", tid, str(exc))
                continue
            ann = latest_annotation(task)
            ref = is_reference(task)
            if ann is None:
                if ref:
                    flagged_unlabeled += 1  # a reference task still to be labeled: neither R nor the pool
                else:
                    pool.append(Item(tid, url))
                continue
            try:
                label = task_type.target(ann.get("result"))
            except LabelError as exc:
                warnings.add("label_outside_config", tid, str(exc))
                continue
            if label is None:
                warnings.add("annotation_without_label", tid, f"annotation {ann.get('id')} has no "
                             "choice for this config's control")
                continue
            (reference if ref else labeled).append(Item(tid, url, label))
        return labeled, reference, pool, flagged_unlabeled

    def _download(self, api: LabelStudioAPI, items: list[Item], warnings: Warnings) -> None:
        """Set item.path for every image that downloads and decodes; count the others. 401/403 fail the job."""
        got = fetch_images(api, [i.url for i in items], self.cache_dir, self.engine.download_workers)
        for item, path in zip(items, got):
            if isinstance(path, Path):
                item.path = path
            elif isinstance(path, DownloadError) and path.status in (401, 403):
                raise JobError(f"Label Studio refused the backend's API key (HTTP {path.status}) for {path.url}: "
                               "set LABEL_STUDIO_API_KEY to a valid legacy token or personal access token")
            elif isinstance(path, DownloadError):
                warnings.add("image_download_failed", item.task_id, str(path))
            else:
                warnings.add("image_undecodable", item.task_id, str(path))


def fetch_images(api: LabelStudioAPI, urls: list[str], cache_dir: Path, workers: int) -> list:
    """Download (cached) and decode-check each URL in parallel: a Path, or the DownloadError /
    ImageDecodeError that says why not, per URL, in order."""

    def fetch(url: str):
        try:
            path = api.download(url, cache_dir)
            open_image(str(path))
            return path
        except (DownloadError, ImageDecodeError) as exc:
            return exc

    if len(urls) <= 1:
        return [fetch(u) for u in urls]
    with ThreadPoolExecutor(min(workers, len(urls)), thread_name_prefix="isal-download") as pool:
        return list(pool.map(fetch, urls))


def describe_api_error(exc: ApiError) -> str:
    """A Label Studio API error as one line a user can act on."""
    body = exc.body
    if isinstance(body, dict):
        body = body.get("detail") or body.get("validation_errors") or body
    if exc.status_code in (401, 403):
        return (f"Label Studio refused the backend's API key (HTTP {exc.status_code}: {body}): set "
                "LABEL_STUDIO_API_KEY to a valid legacy token or personal access token of a project member")
    if exc.status_code == 404:
        return f"Label Studio answered HTTP 404 ({body}): the project may have been deleted"
    return f"Label Studio API error HTTP {exc.status_code}: {body}"


def prediction_stream(task_type: TaskType, version: str, task_ids, outputs, scores):
    """One Label Studio prediction per task, generated lazily (10k tasks never sit in a list)."""
    for tid, out, score in zip(task_ids, outputs, scores):
        yield {"task": int(tid), "result": task_type.prediction(out), "score": float(score), "model_version": version}


def write_back(api: LabelStudioAPI, project_id: int, version: str, predictions, chunk_size: int = 10_000) -> int:
    """The backend's write path: bulk-write predictions of `version`, then make it the project's version.

    `predictions` may be a generator (memory stays flat). Returns how many Label Studio
    kept; the project's model_version (with "Uncertainty sampling", lowest score first)
    is set only if it kept some, since Label Studio refuses a version with no predictions.
    """
    created = api.write_predictions(project_id, predictions, chunk_size=chunk_size)
    if created:
        api.set_model_version(project_id, version)
    return created


def _records(items: list[Item]) -> list[ImageRecord]:
    return [ImageRecord(id=str(i.task_id), path=str(i.path), label=i.label) for i in items]
