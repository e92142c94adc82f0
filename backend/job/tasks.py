"""A job's first step: the project's tasks as the job sees them, labeled, reference and pool, with
what was skipped and why.

    tasks = read_project(api, project, task_type, cache_dir, workers, min_labeled, set_phase)

reads every task with its latest annotation (`read_tasks`), downloads the images (cached,
bad ones counted: `ProjectTasks.download`) and chooses R (`choose_reference`); what it
returns is plain data (records, counts, warnings) for the round and the publication.

labeled = tasks whose latest non-cancelled annotation carries a label of the config;
reference set R = labeled tasks with data["isal_reference"] true (never trained on, never
in the pool); without any, R = the first labeled set L1, saved the first time (the paper's
ISAL_v2 ablation) and reported as such; pool = tasks without a non-cancelled annotation
(and not flagged as reference). 404s and undecodable files are skipped and counted; a
refused API key fails the job.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isal_core.data.images import ImageRecord, open_image
from isal_core.errors import ImageDecodeError
from isal_core.utils.progress import track

from ..errors import DownloadError, JobError, LabelError, MissingMedia
from ..labelstudio.client import LabelStudioAPI
from ..storage.projects import ProjectDir
from ..tasktypes import TaskType

log = logging.getLogger(__name__)

REFERENCE_FLAG = "isal_reference"
MAX_EXAMPLES = 5  # example task ids kept per warning kind


@dataclass
class Item:
    task_id: int
    url: str
    label: Any = None
    path: Path | None = None


def fetch_images(api: LabelStudioAPI, urls: list[str], cache_dir: Path, workers: int) -> list:
    """Download (cached under MODEL_DIR/images) and decode-check each URL in parallel: a Path, or the
    DownloadError / ImageDecodeError that says why not, per URL, in order (a job's tasks, /predict's).
    A file is decoded once, before it enters the cache (a cached one needs no check: at 50,000 photos
    of 640 x 480 a check every job would cost minutes); an undecodable one is fetched again each job."""

    def fetch(url: str):
        try:
            return api.download(url, cache_dir, verify=lambda tmp: open_image(tmp, name="the downloaded file"))
        except (DownloadError, ImageDecodeError) as exc:
            return exc

    def hit(url: str):
        try:
            return api.cached(url, cache_dir)
        except DownloadError as exc:
            return exc

    found = [hit(u) for u in urls]  # cached files without threads (most of a later job's): a pool costs more
    todo = [k for k, f in enumerate(found) if f is None]
    if len(todo) <= 1:
        fetched = [fetch(urls[k]) for k in todo]
    else:
        with ThreadPoolExecutor(min(workers, len(todo)), thread_name_prefix="isal-download") as pool:
            fetched = list(track(pool.map(fetch, [urls[k] for k in todo]), "downloading images", total=len(todo)))
    for k, result in zip(todo, fetched):
        found[k] = result
    return found


def is_key_problem(error) -> bool:
    """Label Studio itself refused the API key (not a missing or broken file, nor another host's 401/403)."""
    return isinstance(error, DownloadError) and error.status in (401, 403) and error.from_label_studio


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

    def log(self, project_id: int) -> None:
        for kind, info in self.as_dict().items():
            log.warning("project %s: %d task(s) skipped or degraded (%s), e.g. %s", project_id, info["count"], kind,
                        "; ".join(info["examples"]))


def latest_annotation(task: dict) -> dict | None:
    """The task's most recent non-cancelled (not skipped) annotation, or None."""
    live = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not live:
        return None
    return max(live, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0))


def is_reference(task: dict) -> bool:
    flag = (task.get("data") or {}).get(REFERENCE_FLAG)
    return flag is True or (isinstance(flag, str) and flag.strip().lower() in ("true", "1", "yes")) or flag == 1


@dataclass
class ProjectTasks:
    labeled: list[Item] = field(default_factory=list)
    reference: list[Item] = field(default_factory=list)
    pool: list[Item] = field(default_factory=list)
    flagged_unlabeled: int = 0  # reference tasks still to be labeled: neither R nor the pool
    reference_source: str = REFERENCE_FLAG
    reference_note: str = ""
    # set by read_project once the parts are final:
    records: dict[str, list[ImageRecord]] = field(default_factory=dict)  # "labeled", "reference", "pool"
    pool_ids: list[int] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    warnings: dict = field(default_factory=dict)  # Warnings.as_dict
    seconds: dict = field(default_factory=dict)  # "read", "download"
    cold: bool = False  # too few labels for a model: a cold start orders the pool

    def finish(self, warnings: Warnings) -> "ProjectTasks":
        """The parts as records, counts and warnings: what the rest of the job reads."""
        self.records = {part: [ImageRecord(id=str(i.task_id), path=str(i.path), label=i.label)
                               for i in getattr(self, part)] for part in ("labeled", "reference", "pool")}
        self.pool_ids = [i.task_id for i in self.pool]
        self.counts = {"labeled": len(self.labeled), "reference": len(self.reference), "unlabeled": len(self.pool),
                       "reference_unlabeled": self.flagged_unlabeled, "skipped": int(sum(warnings.counts.values()))}
        self.warnings = warnings.as_dict()
        self.counts["labels"] = _label_counts(self.labeled)
        self.counts["reference_labels"] = _label_counts(self.reference)
        return self

    def download(self, api: LabelStudioAPI, cache_dir: Path, workers: int, warnings: Warnings) -> None:
        """Keep the tasks whose image downloads and decodes; count the others. 401/403 fail the job."""
        items = self.labeled + self.reference + self.pool
        for item, path in zip(items, fetch_images(api, [i.url for i in items], cache_dir, workers)):
            if isinstance(path, Path):
                item.path = path
            elif is_key_problem(path):
                raise JobError(f"Label Studio refused the backend's API key (HTTP {path.status}) for {path.url}: "
                               "set LABEL_STUDIO_API_KEY to a valid legacy token or personal access token")
            elif isinstance(path, DownloadError):
                warnings.add("download_refused" if path.refused else "image_download_failed", item.task_id, str(path))
            else:  # the message names the cached copy; the user knows the task's URL
                warnings.add("image_undecodable", item.task_id, f"{item.url}: {path}")
        for part in ("labeled", "reference", "pool"):
            setattr(self, part, [i for i in getattr(self, part) if i.path])
        self.reference_note = f"{len(self.reference)} labeled tasks flagged \"{REFERENCE_FLAG}\": true"

    def use_first_labeled_set(self, l1: list[int], created: bool) -> None:
        in_l1 = set(l1)
        self.reference = [i for i in self.labeled if i.task_id in in_l1]
        self.reference_source = "first_labeled_set"
        self.reference_note = (
            f"no labeled task is flagged \"{REFERENCE_FLAG}\": true, so the reference set is the first labeled "
            f"set L1 ({len(self.reference)} of its {len(l1)} tasks usable), saved "
            f"{'now' if created else 'by an earlier job'} in reference_l1.json; it is also trained on. Flag a "
            "labeled, representative set for better selection.")


def _label_counts(items: list[Item]) -> dict[str, int]:
    """How many of each class index (a classification label, an image's tags, or the labels of its boxes)."""
    counts: Counter = Counter()
    for item in items:
        labels = item.label.get("labels", []) if isinstance(item.label, dict) else \
            item.label if isinstance(item.label, list) else [item.label]
        counts.update(str(int(label)) for label in labels)
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))


def read_tasks(api: LabelStudioAPI, project_id: int, task_type: TaskType, warnings: Warnings) -> ProjectTasks:
    """Every task of the project, sorted into labeled, reference and pool (bad ones counted)."""
    tasks = ProjectTasks()
    for task in api.tasks_with_annotations(project_id):
        tid = task["id"]
        try:
            url = task_type.media_url(task)
        except MissingMedia as exc:
            warnings.add("no_image", tid, str(exc))
            continue
        ann, ref = latest_annotation(task), is_reference(task)
        if ann is None:
            if ref:
                tasks.flagged_unlabeled += 1
            else:
                tasks.pool.append(Item(tid, url))
            continue
        try:
            label, problems = task_type.target_with_problems(ann.get("result"))
        except LabelError as exc:
            warnings.add("label_outside_config", tid, str(exc))
            continue
        for problem in problems:  # regions skipped inside an annotation that is kept
            warnings.add("region_skipped", tid, problem)
        if label is None:
            warnings.add("annotation_without_label", tid, f"annotation {ann.get('id')} has no choice for this "
                         "config's control")
            continue
        (tasks.reference if ref else tasks.labeled).append(Item(tid, url, label))
    return tasks


def choose_reference(project: ProjectDir, tasks: ProjectTasks, min_labeled: int, warnings: Warnings,
                     cold_start: bool = False) -> None:
    """R = the flagged tasks, else the first labeled set L1 (saved once); refuse what cannot train, unless a
    cold start may order the pool instead."""
    if len(tasks.labeled) < min_labeled and cold_start and tasks.pool:
        tasks.cold = True
        tasks.reference_source, tasks.reference_note = "none", "cold start: no model yet, so no reference set"
        return
    if len(tasks.labeled) < min_labeled:
        raise JobError(f"need at least {min_labeled} labeled tasks with a usable image to train, have "
                       f"{len(tasks.labeled)} (skipped: {dict(warnings.counts) or 'none'})")
    if not tasks.reference:
        l1, created = project.first_labeled_set([i.task_id for i in tasks.labeled])
        tasks.use_first_labeled_set(l1, created)
        (log.warning if created else log.info)(
            "project %s: no labeled task has data.%s = true; the reference set is the first labeled set "
            "L1 (%d tasks%s). Flag a labeled, representative set with \"%s\": true for better selection.",
            project.id, REFERENCE_FLAG, len(tasks.reference), ", saved now" if created else "", REFERENCE_FLAG)
    if not tasks.reference:
        raise JobError("the reference set is empty: no labeled task is flagged "
                       f"\"{REFERENCE_FLAG}\": true and none of the first labeled set L1 is usable")
    if not tasks.pool:
        raise JobError("no unlabeled task with a usable image is left to rank")


def read_project(api: LabelStudioAPI, project: ProjectDir, task_type: TaskType, cache_dir: Path, workers: int,
                 min_labeled: int, set_phase=lambda phase: None, cold_start: bool = False) -> ProjectTasks:
    """The job's view of the project: tasks sorted and downloaded, R chosen (or, with too few labels and
    `cold_start`, marked cold), skips counted and logged."""
    warnings, start = Warnings(), time.time()
    tasks = read_tasks(api, project.ls_id, task_type, warnings)
    read = time.time()
    set_phase("downloading images")
    tasks.download(api, cache_dir, workers, warnings)
    tasks.seconds = {"read": round(read - start, 2), "download": round(time.time() - read, 2)}
    choose_reference(project, tasks, min_labeled, warnings, cold_start)
    warnings.log(project.id)
    return tasks.finish(warnings)
