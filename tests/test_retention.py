"""Bounded disk: old versions beyond KEEP_VERSIONS and the least recently used cached images
beyond CACHE_MAX_MB are removed after a job; the current version and fresh files stay."""
from __future__ import annotations

import os
import time
from pathlib import Path

from backend.storage.layout import IMAGE_CACHE
from backend.storage.projects import ModelDir
from backend.storage.retention import cache_bytes, prune_cache, prune_versions

try:
    from test_backend_app import make_app, publish_version
except ImportError:  # tests/ imported as a package
    from tests.test_backend_app import make_app, publish_version


def test_old_versions_beyond_the_kept_ones_are_removed_never_the_current(tmp_path):
    models = tmp_path / "models"
    names = [publish_version(models).name for _ in range(5)]
    (models / "7" / "isal-7-0-torn").mkdir()  # an old torn dir (no meta)
    project = ModelDir(models).get(7)
    assert project.current.name == names[-1] and len(project.versions(good_only=False)) == 6
    removed = prune_versions(project, keep=2)
    assert sorted(removed) == sorted(names[:3] + ["isal-7-0-torn"])
    assert project.versions(good_only=False) == [names[4], names[3]] and project.current.name == names[-1]
    assert prune_versions(project, keep=0) == [] and prune_versions(project, keep=2) == []


def test_the_cache_is_cut_to_its_cap_least_recently_used_first(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    now = time.time()
    for i in range(10):
        f = cache / f"{i}.jpg"
        f.write_bytes(b"x" * 1000)
        os.utime(f, (now - 100 + i, now - 100 + i))  # 0 is the oldest
    os.utime(cache / "0.jpg")  # ... but was just used again (a cache hit)
    assert cache_bytes(cache) == 10_000
    report = prune_cache(cache, 4_000)
    assert report == {"files_removed": 6, "bytes_before": 10_000, "bytes_after": 4_000}
    assert sorted(f.name for f in cache.iterdir()) == ["0.jpg", "7.jpg", "8.jpg", "9.jpg"]


def test_the_embedding_cache_is_capped_and_a_hit_keeps_an_entry(tmp_path):
    """EmbeddingCache's nested files: a cap cuts the least recently used; a hit (memory or disk) refreshes."""
    import torch

    from isal_core.tasks.frozen import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "emb")
    now = time.time()
    for i in range(8):
        digest = f"{i:02x}" * 32
        cache.put("bb", digest, torch.full((250,), float(i)))
        path = cache.path("bb", digest)
        os.utime(path, (now - 100 + i, now - 100 + i))
    per_file = cache.path("bb", "00" * 32).stat().st_size
    assert cache.get("bb", "00" * 32)[0] == 0  # oldest, but used again (a memory hit)
    assert EmbeddingCache(tmp_path / "emb").get("bb", "01" * 32)[0] == 1  # and a disk hit
    (tmp_path / "emb" / "bb" / ".partial.tmp").write_bytes(b"z" * 10_000)  # a write under way: never pruned
    report = prune_cache(tmp_path / "emb", 4 * per_file, "embedding cache")
    assert report["files_removed"] == 4 and report["bytes_after"] == 4 * per_file
    left = sorted(p.name[:2] for p in (tmp_path / "emb").rglob("*.npy"))
    assert left == ["00", "01", "06", "07"] and (tmp_path / "emb" / "bb" / ".partial.tmp").exists()
    assert EmbeddingCache(tmp_path / "emb").get("bb", "02" * 32) is None  # pruned: computed again when needed


def test_a_job_prunes_with_the_backend_settings(tmp_path):
    """KEEP_VERSIONS and CACHE_MAX_MB act after each job (the job itself stands in: it publishes one)."""
    models = tmp_path / "models"
    first = publish_version(models)
    cache = models / IMAGE_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    for i in range(5):
        (cache / f"{i}.png").write_bytes(b"y" * (1 << 20))  # 5 MB of images
    embeddings = models / "embeddings" / "bb" / "ab"
    embeddings.mkdir(parents=True)
    for i in range(3):
        (embeddings / f"{i}.pt").write_bytes(b"e" * (1 << 20))  # 3 MB of embeddings
    backend = make_app(tmp_path, keep_versions=1, cache_max_mb=2, embedding_cache_max_mb=1,
                       label_studio_url="http://127.0.0.1:9", label_studio_api_key="never-used").extensions["isal"]
    backend.model_dir.known(7)
    def job(project, api, set_phase):  # publishes a version as a job does, then the project folder sees it
        name = publish_version(models).name
        project.load()
        return {"model_version": name}

    backend.job.run = job
    report = backend._run_job(7, lambda phase: None)
    assert report["pruned_versions"] == [first.name]
    assert report["image_cache"]["bytes_after"] <= 2 << 20 and cache_bytes(cache) <= 2 << 20
    assert report["embedding_cache_pruned"]["bytes_before"] == 3 << 20
    assert cache_bytes(models / "embeddings") <= 1 << 20
    assert ModelDir(models).get(7).versions() == [report["model_version"]]


def test_disk_is_bounded_by_default():
    """Nothing set: versions, image cache and embedding cache are capped (docs/reliability.md quotes the caps)."""
    from backend.settings import Settings

    defaults = Settings()
    assert (defaults.keep_versions, defaults.cache_max_mb, defaults.embedding_cache_max_mb) == (10, 10240, 2048)
    text = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    assert "`KEEP_VERSIONS` (10)" in text and "`CACHE_MAX_MB` (10,240)" in text and "(2,048)" in text
