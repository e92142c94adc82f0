"""Predictions in Label Studio of model versions that are not published (yet, or ever).

A job writes its version's predictions before it publishes the version on disk and
points Label Studio at it. So the version is recorded first, in
MODEL_DIR/<project>/unpublished.json: a job that fails deletes what it wrote
(`discard`), and each job begins by deleting the predictions of recorded versions a
killed job never published, and by pointing Label Studio at the current version if a
crash came between publishing and that (`reconcile`). Predictions of published
versions, pruned ones included, are never touched.
"""
from __future__ import annotations

import json
import logging

from isal_core.atomic import write_json

from .ls_client import LabelStudioAPI
from .store import ProjectStore

log = logging.getLogger(__name__)


def _path(store: ProjectStore):
    return store.root / "unpublished.json"


def versions(store: ProjectStore) -> list[str]:
    try:
        return [str(v) for v in json.loads(_path(store).read_text())["versions"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("project %s: unreadable unpublished.json (%s); starting it afresh", store.id, exc)
        return []


def mark(store: ProjectStore, version: str) -> None:
    """Recorded before a job writes the version's predictions, so a crash cannot leave them unknown."""
    write_json(_path(store), {"versions": sorted({*versions(store), version})})


def forget(store: ProjectStore, version: str) -> None:
    write_json(_path(store), {"versions": [v for v in versions(store) if v != version]})
def discard(store: ProjectStore, api: LabelStudioAPI, version: str) -> None:
    """A failed job's predictions go (best effort: if Label Studio is unreachable, the next job's reconcile)."""
    if version not in versions(store):
        return
    try:
        n = api.delete_version_predictions(store.id, version)
        forget(store, version)
        log.info("project %s: deleted the %d predictions of the failed job's version %s", store.id, n, version)
    except Exception as exc:  # the job's own error is what the user must see
        log.warning("project %s: could not delete the predictions of %s yet (%s); the next job will",
                    store.id, version, exc)


def reconcile(store: ProjectStore, api: LabelStudioAPI) -> dict:
    """Undo what a killed job left in Label Studio: predictions of versions it never published are
    deleted; a version published on disk that Label Studio does not serve yet becomes current there."""
    published, done = set(store.versions()), {}
    for version in versions(store):
        if version not in published:
            done.setdefault("deleted_predictions", {})[version] = api.delete_version_predictions(store.id, version)
            log.warning("project %s: deleted %d predictions of %s, a version an interrupted job never published",
                        store.id, done["deleted_predictions"][version], version)
        forget(store, version)
    current = store.current.name if store.current else None
    if current:
        serving = api.project_model_version(store.id)
        if serving != current and (not serving or serving.startswith(f"isal-{store.id}-")):
            api.set_model_version(store.id, current)
            done["model_version_set"] = current
            log.warning("project %s: Label Studio served %r; pointed it at the current version %s",
                        store.id, serving, current)
    return done
