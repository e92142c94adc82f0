"""Data hygiene against a real Label Studio, on the default embedding (EfficientNet-Lite0): a project whose pool
holds mirrored copies of labeled images, a copy of a reference image and two strangers (a grey frame, noise).
After a job the tab "ISAL: duplicates and outliers" lists exactly the flagged tasks with their reasons, /hygiene
and /status report the leak, and /next serves every other pool task before any flagged one; the next job keeps
the tab in step (no duplicate predictions). A project with no labels (a cold start) gets its report too."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from backend.job.hygiene import HYGIENE_VERSION
from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.views import HYGIENE_VIEW, views

try:
    from backend_helpers import Image, choice_result, cifar_images, create_cifar_project, wait_for_job
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import Image, choice_result, cifar_images, create_cifar_project, wait_for_job
    from tests.test_backend_app import make_app

pytestmark = pytest.mark.integration


def add_strangers(files_root, sub: str, images: list[Image]) -> list[Image]:
    """Mirrored copies of the first three train images, a copy of the first test image (all labeled or in R
    below), a grey frame and noise: written beside the images, returned as pool images (label unused)."""
    root = files_root / sub
    train = [im for im in images if im.split == "train"]
    test = [im for im in images if im.split == "test"]
    made = []
    for k, im in enumerate(train[:3]):
        PILImage.open(files_root / im.rel).transpose(PILImage.FLIP_LEFT_RIGHT).save(root / f"flip-{k}.png")
        made.append(Image(f"{sub}/flip-{k}.png", im.label, "pool"))
    PILImage.open(files_root / test[0].rel).save(root / "leak.png")
    made.append(Image(f"{sub}/leak.png", test[0].label, "pool"))
    PILImage.new("RGB", (32, 32), (128, 128, 128)).save(root / "grey.png")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    PILImage.fromarray(noise).save(root / "noise.png")
    made += [Image(f"{sub}/grey.png", "cat", "pool"), Image(f"{sub}/noise.png", "cat", "pool")]
    return made


def tab_tasks(ls, api: LabelStudioAPI, pid: int) -> dict[int, str]:
    """{task id: reason} of the hygiene tab's tasks (the Data Manager lists a task's predictions of the served
    version only: the reason is read from the predictions API)."""
    (view,) = [v for v in views(api, pid) if (v.get("data") or {}).get("title") == HYGIENE_VIEW["title"]]
    out = {}
    for task in ls.tasks.list(project=pid, view=view["id"], page_size=500):
        predictions = api.request("GET", "api/predictions/", params={"task": task.id}).json()
        (mine,) = [p for p in predictions if p["model_version"] == HYGIENE_VERSION]
        out[task.id] = mine["result"][0]["value"]["choices"][0]
    return out


def test_flagged_tasks_are_listed_reported_and_served_last(label_studio, tmp_path):
    ls = label_studio.client()
    sub, images = cifar_images(label_studio.files_root, 24, 6, seed=21)
    extra = add_strangers(label_studio.files_root, sub, images)
    pid, by_task, _ = create_cifar_project(ls, label_studio.files_root, sub, images + extra, "hygiene")
    train = [t for t, im in by_task.items() if im.split == "train"]
    labeled = set(train[:10])
    for t, im in by_task.items():
        if im.split == "test" or t in labeled:
            ls.annotations.create(id=t, result=choice_result(im.label))
    rel = {im.rel: t for t, im in by_task.items()}
    flips = [rel[f"{sub}/flip-{k}.png"] for k in range(3)]
    leak, grey, noise = rel[f"{sub}/leak.png"], rel[f"{sub}/grey.png"], rel[f"{sub}/noise.png"]
    reference = rel[[im for im in images if im.split == "test"][0].rel]
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"retrain_every": 0})
    c = app.test_client()
    api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, jobs_started=1, timeout=300)
    assert status["last_error"] is None and status["kind"] == "round", status

    found = c.get(f"/hygiene?project={pid}").json
    groups = [set(g["tasks"]) for g in found["groups"]]
    for k, t in enumerate(flips):
        assert {train[k], t} in groups, (k, groups)
    assert {reference, leak} in groups
    assert {o["task"] for o in found["outliers"]} == {grey, noise}
    assert found["leaks"] == [{"reference": reference, "copies": [leak], "roles": ["pool"]}]
    assert status["hygiene"]["leaked"] == [reference] and "optimistic" in status["hygiene_warnings"][0]
    assert status["job"]["last_job"]["warnings"]["reference_leaks"]["count"] == 1
    deferred = {int(t) for t in found["deferred"]}
    assert deferred == {*flips, leak, grey, noise}

    flagged = {t for g in groups for t in g} | {grey, noise}
    listed = tab_tasks(ls, api, pid)
    assert set(listed) == flagged
    assert listed[grey].startswith("outlier:") and f"{train[0]} (labeled)" in listed[flips[0]]
    page = c.get(f"/projects/{pid}").get_data(as_text=True)
    assert "id='leak-warning'" in page and "id='task-map'" in page and "map-duplicate" in page

    pool = [t for t in by_task if t not in labeled and by_task[t].split != "test"]
    served = []
    for _ in range(len(pool) - len(deferred)):  # one annotator follows /next through the rest of the pool
        task = api.next_task(pid)
        served.append(task["id"])
        ls.annotations.create(id=task["id"], result=choice_result(by_task[task["id"]].label))
    assert set(served) == set(pool) - deferred  # every other pool task before any flagged one

    c.post("/train", json={"project": f"{pid}.0"})
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, jobs_started=2, timeout=300)
    assert status["last_error"] is None, status
    again = tab_tasks(ls, api, pid)  # the same flagged tasks (their roles changed: labeled now), once each
    assert set(again) == flagged
    assert status["job"]["last_job"]["hygiene_tab"]["kept"] + status["job"]["last_job"]["hygiene_tab"][
        "written"] == len(flagged)


def test_a_project_with_no_labels_gets_a_report_and_no_failed_job(label_studio, tmp_path):
    ls = label_studio.client()
    sub, images = cifar_images(label_studio.files_root, 12, 0, seed=22)
    PILImage.open(label_studio.files_root / images[0].rel).save(label_studio.files_root / sub / "copy.png")
    pid, by_task, _ = create_cifar_project(ls, label_studio.files_root, sub, images + [Image(f"{sub}/copy.png",
                                                                                             "cat", "train")], "cold")
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"retrain_every": 0})
    c = app.test_client()
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, jobs_started=1, timeout=300)
    assert status["last_error"] is None and status["kind"] == "cold_start", status
    found = c.get(f"/hygiene?project={pid}").json
    first = {im.rel: t for t, im in by_task.items()}
    assert [set(g["tasks"]) for g in found["groups"]] == [{first[images[0].rel], first[f"{sub}/copy.png"]}]
    assert found["leaks"] == [] and status["hygiene_warnings"] == []


@pytest.mark.parametrize("copies", [1, 4])
def test_one_task_or_identical_tasks_get_clear_answers(label_studio, tmp_path, copies):
    """A project of one task, or of four copies of one image (no labels: a cold start): the job succeeds, /hygiene
    says what it found (nothing; one group of all four, three of them served after the first)."""
    ls = label_studio.client()
    sub, images = cifar_images(label_studio.files_root, 1, 0, seed=23)
    for k in range(1, copies):
        PILImage.open(label_studio.files_root / images[0].rel).save(label_studio.files_root / sub / f"same-{k}.png")
    same = images + [Image(f"{sub}/same-{k}.png", images[0].label, "train") for k in range(1, copies)]
    pid, by_task, _ = create_cifar_project(ls, label_studio.files_root, sub, same, f"identical {copies}")
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"retrain_every": 0})
    c = app.test_client()
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, jobs_started=1, timeout=300)
    assert status["last_error"] is None, status
    found = c.get(f"/hygiene?project={pid}").json
    assert found["tasks"] == copies and found["outliers"] == []
    if copies == 1:
        assert found["groups"] == [] and found["deferred"] == {}
    else:
        assert [set(g["tasks"]) for g in found["groups"]] == [set(by_task)]
        assert len(found["deferred"]) == copies - 1
