"""A project's tasks as a job sees them: labeled, reference and pool, with what was skipped and why."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isal_core.data import ImageRecord

from .downloads import fetch_images, is_key_problem
from .errors import JobError
from .ls_client import DownloadError, LabelStudioAPI
from .tasktypes import LabelError, MissingMedia, TaskType

log = logging.getLogger(__name__)

REFERENCE_FLAG = "isal_reference"
MAX_EXAMPLES = 5  # example task ids kept per warning kind


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

    def records(self, part: str) -> list[ImageRecord]:
        return [ImageRecord(id=str(i.task_id), path=str(i.path), label=i.label) for i in getattr(self, part)]

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
            else:
                warnings.add("image_undecodable", item.task_id, str(path))
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

    def counts(self, warnings: Warnings) -> dict:
        return {"labeled": len(self.labeled), "reference": len(self.reference), "unlabeled": len(self.pool),
                "reference_unlabeled": self.flagged_unlabeled, "skipped": int(sum(warnings.counts.values()))}


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
