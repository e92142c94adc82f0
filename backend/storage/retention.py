"""Bounded disk: old model versions and cached task files are pruned after each job.

`KEEP_VERSIONS` keeps the newest N complete versions of a project (the current one always;
0 = keep all). `CACHE_MAX_MB` caps the downloaded-image cache and `EMBEDDING_CACHE_MAX_MB`
the frozen-feature embedding cache: the least recently used files go first (by access
time: a cache hit sets it, the file itself is untouched), down to the cap (0 = no cap).
A pruned embedding is computed again when an image needs it.
Label Studio keeps the predictions of pruned versions; only the backend's files go.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def prune_versions(project, keep: int) -> list[str]:
    """Remove a project's versions beyond the newest `keep` complete ones (torn ones older than those
    too); never the current version. Returns the removed names."""
    if keep <= 0:
        return []
    good = project.versions(good_only=True)
    kept = set(good[:keep]) | ({project.current.name} if project.current is not None else set())
    oldest_kept = max((project.versions(good_only=False).index(n) for n in kept), default=0)
    removed = []
    for position, name in enumerate(project.versions(good_only=False)):
        if name not in kept and (name in good or position > oldest_kept):
            shutil.rmtree(project.root / name, ignore_errors=True)
            removed.append(name)
    if removed:
        log.info("project %s: pruned %d old model version(s) (KEEP_VERSIONS=%d)", project.id, len(removed), keep)
    return removed


def _cached_files(folder: Path) -> list[Path]:
    """Every cached file under `folder` (subfolders too), not the temp files of writes under way."""
    return [f for f in Path(folder).rglob("*") if f.is_file() and not f.name.startswith(".")]


def cache_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in _cached_files(folder))


def prune_cache(folder: Path, max_bytes: int, what: str = "image cache") -> dict:
    """Delete the least recently used files until the folder holds at most `max_bytes`."""
    folder = Path(folder)
    files = sorted(_cached_files(folder), key=lambda f: max(f.stat().st_atime, f.stat().st_mtime))
    before = total = sum(f.stat().st_size for f in files)
    removed = 0
    for f in files:
        if max_bytes <= 0 or total <= max_bytes:
            break
        size = f.stat().st_size
        try:
            os.remove(f)
        except FileNotFoundError:
            continue
        total -= size
        removed += 1
    if removed:
        log.info("%s: removed %d least recently used file(s), %d -> %d bytes", what, removed, before, total)
    return {"files_removed": removed, "bytes_before": before, "bytes_after": total}
