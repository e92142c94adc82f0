"""What some tests need beyond the repository, and what happens without it.

On a developer's machine a missing resource skips the tests that need it; under CI
(`CI=true`, which `.ci/run` sets) it fails them, and the session stops at once with a
message naming everything missing, so CI can never go green without running them.
Mark a test `@pytest.mark.needs("bccd")`, or call `need("cifar10")` in a fixture.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR_ZIP = SHARED / "data" / "cifar10-jpg.zip"
BCCD_ZIP = SHARED / "data" / "bccd-voc.zip"
MMCV_WHEEL = SHARED / "wheels" / "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl"


def _mmdet() -> bool:
    from isal_core.tasks.mmdet_fcos import mmdet_available

    return mmdet_available()


def _postgres_bin():
    from backend.tools.postgres import postgres_bin

    return postgres_bin()


RESOURCES = {
    "cifar10": (lambda: CIFAR_ZIP.is_file(), f"{CIFAR_ZIP} (the shared CIFAR-10 JPG archive beside the repository)"),
    "bccd": (lambda: BCCD_ZIP.is_file(), f"{BCCD_ZIP} (the shared BCCD Pascal VOC archive beside the repository)"),
    "label-studio": (lambda: importlib.util.find_spec("label_studio") is not None,
                     "the label-studio package (requirements-dev.txt: make install)"),
    "postgresql": (lambda: _postgres_bin() is not None,
                   "PostgreSQL 15's server binaries (Debian's postgresql package: make test installs it)"),
    "mmdet": (_mmdet, f"mmdet 3.x with mmcv's compiled ops (make install installs mmdet and {MMCV_WHEEL})"),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing() -> list[str]:
    """What of RESOURCES this machine lacks, each with where it comes from."""
    return [f"{name}: {where}" for name, (present, where) in RESOURCES.items() if not present()]


def need(name: str) -> None:
    """Skip the calling test without `name`, or fail it under CI."""
    present, where = RESOURCES[name]
    if not present():
        (pytest.fail if in_ci() else pytest.skip)(f"needs {where}")
