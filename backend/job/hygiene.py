"""A job's data hygiene: near-duplicates, leaks into R and outliers among the project's tasks (frozen features).

Runs on the embeddings the round already computed (isal_core.selection.hygiene), with 8x8 thumbnails (the image
and two centre crops) kept per image file in MODEL_DIR/<project>/thumbnails.npz so a later job decodes only new
images. It moves the
pool's deferred tasks behind the rest of the served order (a near-duplicate of a labeled or reference task,
a duplicate group's second member, an outlier), and gives the version `hygiene.json`: the groups, leaks and
outliers by task id, the thresholds, and the map (the embeddings' first two principal components, labeled /
reference / pool / next batch / flagged), which /hygiene, /status and the project page read. The Data Manager
tab "ISAL: duplicates and outliers" lists the flagged tasks through predictions of model version
`isal-hygiene` (not a served version: Label Studio serves by the project's version), kept in step each job.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from isal_core.selection.hygiene import SCALES, Hygiene, find_hygiene, find_leaks, hygienic_order, thumbnail
from isal_core.utils.atomic import atomic_write

from ..labelstudio.client import LabelStudioAPI
from ..labelstudio.views import HYGIENE_VIEW, ensure_view
from ..storage.layout import THUMBNAILS
from ..storage.projects import ProjectDir

log = logging.getLogger(__name__)
HYGIENE_VERSION = "isal-hygiene"
MAP_POINTS = 5000  # the map draws at most this many tasks (evenly spaced beyond)
SHAPE = (len(SCALES), 8, 8)  # an image's thumbnails


@dataclass
class HygieneReport:
    """What a job found: `report` (hygiene.json), the served `order` with the deferred pool tasks last,
    {task id: reason} of every flagged task (the tab's predictions), and `summary`, meta.json's part (the counts
    and the leaked reference tasks: a warning wherever they are shown)."""

    report: dict
    order: list[int]
    flagged: dict[int, str] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    warnings: dict = field(default_factory=dict)  # the leaks, in a job's warnings (Warnings.as_dict's shape)


class Thumbnails:
    """The thumbnails of a project's image files, kept between jobs (the module docstring)."""

    def __init__(self, path: Path):
        self.path, self.known, self.added = path, {}, False
        if path.is_file():
            try:
                with np.load(path) as z:
                    if z["thumbs"].shape[1:] == SHAPE:  # (else made with other scales: recomputed)
                        self.known = dict(zip(z["paths"].tolist(), z["thumbs"]))
            except (OSError, ValueError, KeyError):  # a torn file: they are recomputed
                log.warning("%s unreadable; thumbnails are recomputed", path)

    def __call__(self, image_path: str) -> np.ndarray:
        if image_path not in self.known:
            self.known[image_path] = thumbnail(image_path)
            self.added = True
        return self.known[image_path]

    def save(self, keep: set[str]) -> None:
        if self.added or set(self.known) - keep:
            paths = sorted(p for p in self.known if p in keep)
            with atomic_write(self.path, "wb") as f:
                np.savez(f, paths=np.asarray(paths, dtype=str),
                         thumbs=np.stack([self.known[p] for p in paths]) if paths else np.zeros((0, *SHAPE)))


def check(project: ProjectDir, tasks, datasets: tuple, order: list[int], budget: int) -> HygieneReport:
    """The hygiene of a job's tasks (`datasets`: the round's labeled, pool and reference datasets, with `.x`)."""
    labeled, pool, reference = datasets
    in_r = {i.task_id for i in tasks.reference}
    keep = [k for k, item in enumerate(tasks.labeled) if item.task_id not in in_r]
    ids = [tasks.labeled[k].task_id for k in keep] + list(tasks.pool_ids) + [i.task_id for i in tasks.reference]
    roles = ["labeled"] * len(keep) + ["pool"] * len(tasks.pool_ids) + ["reference"] * len(tasks.reference)
    records = [tasks.records["labeled"][k] for k in keep] + tasks.records["pool"] + tasks.records["reference"]
    x = torch.cat([labeled.x[keep], pool.x, reference.x]).float()
    thumbs = Thumbnails(project.root / THUMBNAILS)
    found = find_hygiene(x, lambda row: thumbs(records[row].path))
    thumbs.save({r.path for r in records})
    pool_rows = list(range(len(keep), len(keep) + len(tasks.pool_ids)))
    served, moved = hygienic_order(order, pool_rows, found, roles)
    flagged = _reasons(found, ids, roles)
    leaks = [{"reference": ids[leak["reference"]], "copies": [ids[c] for c in leak["copies"]], "roles": leak["roles"]}
             for leak in find_leaks(found, roles)]
    report = {
        "tasks": len(ids), "groups": [{"tasks": [ids[r] for r in g], "roles": [roles[r] for r in g]}
                                      for g in found.groups],
        "leaks": leaks,
        "outliers": [{"task": ids[r], "role": roles[r], "distance": round(float(found.distance[r]), 4)}
                     for r in found.outliers],
        "deferred": {str(tasks.pool_ids[p]): why for p, why in moved.items()},
        "thresholds": {**vars(found.thresholds), "outlier_distance": round(found.threshold, 4), "k": found.k},
        "map": _map(x, ids, roles, found, set(served[:budget]), pool_rows),
    }
    report["counts"] = {"groups": len(found.groups), "in_groups": sum(map(len, found.groups)), "leaks": len(leaks),
                        "outliers": len(found.outliers), "deferred": len(moved)}
    summary = {**report["counts"], "leaked": [leak["reference"] for leak in leaks]}
    warnings = {"reference_leaks": {"count": len(leaks), "examples": [  # the metric on R is optimistic
        f"reference task {leak['reference']} ~ {', '.join(map(str, leak['copies']))}" for leak in leaks[:5]]}}
    return HygieneReport(report, served, flagged, summary, warnings if leaks else {})


def _reasons(found: Hygiene, ids: list[int], roles: list[str]) -> dict[int, str]:
    """{task id: what the tab shows}: its group (named by its first task, which stays while the group does: a
    later job rewrites only what changed) with the other tasks and their roles, or why an outlier."""
    reasons = {}
    for rows in found.groups:
        first = min(ids[r] for r in rows)
        for r in rows:
            others = ", ".join(f"{ids[o]} ({roles[o]})" for o in rows if o != r)
            reasons[ids[r]] = f"duplicate group {first}: near-duplicate of {others}"
    for r in found.outliers:
        reasons[ids[r]] = (f"outlier: {found.distance[r]:.2f} from its {found.k}th nearest task "
                           f"(threshold {found.threshold:.2f})")
    return reasons


def _map(x: torch.Tensor, ids, roles, found: Hygiene, batch: set[int], pool_rows) -> dict:
    """The embeddings' first two principal components, of at most MAP_POINTS tasks, with what each task is."""
    n = len(ids)
    rows = np.linspace(0, n - 1, MAP_POINTS).round().astype(int) if n > MAP_POINTS else np.arange(n)
    rows = sorted(set(rows.tolist()) | {pool_rows[p] for p in batch} | {r for g in found.groups for r in g}
                  | set(found.outliers))
    if n < 3:
        xy = np.zeros((len(rows), 2))
    else:
        centred = x - x.mean(0)
        _, _, v = torch.pca_lowrank(centred, q=2, center=False, niter=4)
        xy = (centred[rows] @ v[:, :2]).numpy()
    next_batch = {pool_rows[p] for p in batch}
    group_of, outliers = found.group_of(), set(found.outliers)
    kind = ["outlier" if r in outliers else "duplicate" if r in group_of else "next" if r in next_batch
            else roles[r] for r in rows]
    return {"task": [ids[r] for r in rows], "x": np.round(xy[:, 0], 4).tolist(), "y": np.round(xy[:, 1], 4).tolist(),
            "kind": kind, "of": n}


def sync_tab(api: LabelStudioAPI, project: ProjectDir, flagged: dict[int, str], names: tuple[str, str]) -> dict:
    """Label Studio's `isal-hygiene` predictions made to match `flagged` (a changed reason: deleted, written
    again), one request per deletion and per new one (an annotation waits for one at most; a later job only
    writes what changed); the tab created once. The reason is the text of a choice of the project's control
    (`names`: its from_name and to_name), which the tab shows."""
    listed = api.request("GET", "api/predictions/", params={"project": int(project.ls_id)},
                         request_options={"timeout_in_seconds": max(api.timeout, 600)}).json()
    have = {}
    for p in listed:
        if p.get("model_version") == HYGIENE_VERSION:
            have.setdefault(p["task"], []).append(p)
    stale = [p["id"] for t, ps in have.items() for p in ps if t not in flagged or len(ps) > 1
             or _reason(p) != flagged[t]]
    for prediction_id in stale:
        api.request("DELETE", f"api/predictions/{int(prediction_id)}/", ok=(204, 404))
    current = {t for t, ps in have.items() if len(ps) == 1 and t in flagged and _reason(ps[0]) == flagged[t]}
    new = [{"task": t, "model_version": HYGIENE_VERSION, "score": None, "result": [_result(why, names)]}
           for t, why in flagged.items() if t not in current]
    written = api.create_each(new) if new else 0  # (the bulk import drops a choice the config does not have)
    if flagged:
        ensure_view(api, project.ls_id, **HYGIENE_VIEW)
    return {"written": written, "deleted": len(stale), "kept": len(current)}


def publish_tab(api: LabelStudioAPI, project: ProjectDir, flagged: dict[int, str], names: tuple[str, str]) -> dict:
    """sync_tab; a failure is a warning (the version serves already; the next job tries again)."""
    try:
        return sync_tab(api, project, flagged, names)
    except Exception as exc:
        log.warning("project %s: could not list the duplicates and outliers in Label Studio (%s)", project.id, exc)
        return {"error": str(exc)}


def _result(why: str, names: tuple[str, str]) -> dict:
    return {"from_name": names[0], "to_name": names[1], "type": "choices", "value": {"choices": [why]}}


def _reason(prediction: dict) -> str | None:
    try:
        return prediction["result"][0]["value"]["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None
