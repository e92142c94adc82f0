"""Shared by the backend tests: CIFAR-10 projects in a real Label Studio, and waiting on /status."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

try:
    from needs import CIFAR_ZIP, need
except ImportError:  # tests/ imported as a package
    from tests.needs import CIFAR_ZIP, need

from backend.tools.demo import Image, choice_result, extract_cifar, label_config

__all__ = ["CIFAR_ZIP", "Image", "choice_result", "label_config", "cifar_images", "create_cifar_project",
           "wait_for_job"]


def cifar_images(files_root: Path, n_train: int, n_test: int, seed: int = 0) -> tuple[str, list[Image]]:
    """(subdir, images) extracted under files_root/subdir from ../shared/data/cifar10-jpg.zip."""
    need("cifar10")
    sub = f"cifar-{uuid.uuid4().hex[:8]}"
    return sub, extract_cifar(Path(files_root) / sub, sub, n_train, n_test, seed)


def create_cifar_project(ls, files_root: Path, sub: str, images: list[Image], title: str,
                         extra_tasks: list[dict] = ()) -> tuple[int, dict[int, Image], list[int]]:
    """Project (SDK) whose tasks are the images (test split flagged `isal_reference`), plus extra_tasks.

    Returns (project id, {task id: image} for the image tasks, ids of the extra tasks).
    """
    project = ls.projects.create(title=title, label_config=label_config())
    ls.import_storage.local.create(project=project.id, path=str(Path(files_root) / sub), title=sub)
    data = [{"image": f"/data/local-files/?d={im.rel}", "isal_reference": im.split == "test"} for im in images]
    data += list(extra_tasks)
    ids = list(ls.projects.import_tasks(id=project.id, request=data, return_task_ids=True).task_ids)
    assert len(ids) == len(data)
    return project.id, dict(zip(ids, images)), ids[len(images):]


def wait_for_job(get_status, project_id: int, jobs_started: int = 1, timeout: float = 300) -> dict:
    """Poll /status until `jobs_started` jobs have started and none runs or waits; returns the status."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = get_status(project_id)
        job = status["job"]
        if job["jobs_started"] >= jobs_started and job["state"] == "idle" and not job["pending"]:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job of project {project_id} still running after {timeout} s: {status}")


def frozen_project(label_studio, tmp_path: Path, n_train: int, n_labeled: int, seed: int, title: str):
    """A CIFAR-10 project (6 reference images and `n_labeled` train images annotated) and a random
    ResNet-18 weights file for frozen features. Returns (project id, {task id: image}, train ids, weights)."""
    import torch
    import torchvision

    weights = tmp_path / "resnet18.pt"
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    return (*annotated_project(label_studio, n_train, n_labeled, seed, title), weights)


def annotated_project(label_studio, n_train: int, n_labeled: int, seed: int, title: str):
    """A CIFAR-10 project: 6 reference images and `n_labeled` train images annotated.
    Returns (project id, {task id: image}, train ids)."""
    ls = label_studio.client()
    sub, images = cifar_images(label_studio.files_root, n_train, 6, seed=seed)
    pid, by_task, _ = create_cifar_project(ls, label_studio.files_root, sub, images, title)
    train = [t for t, im in by_task.items() if im.split == "train"]
    for t, im in by_task.items():
        if im.split == "test" or t in train[:n_labeled]:
            ls.annotations.create(id=t, result=choice_result(im.label))
    return pid, by_task, train
