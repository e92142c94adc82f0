"""The README's first hour in the Label Studio UI, clicked through in headless Chromium.

Log in, label a few tasks in the labeling screen, press Start training through the model
card's menu and its dialog, wait for the job, open "Label All Tasks": Label Studio first
hands back the task still locked to the annotator, then the backend's top task; while
the model is below the pre-labeling threshold no choice is pre-ticked. Screenshots of
every step are kept under .isal/browser-artifacts/<test>/ when the test fails.
Run with `make test-browser` (it installs Chromium from Debian packages and selenium).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

from backend.tools.servers import BackendProcess

try:
    from backend_helpers import choice_result, cifar_images, create_cifar_project, wait_for_job
    from browser import Browser
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import choice_result, cifar_images, create_cifar_project, wait_for_job
    from tests.browser import Browser

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[1] / ".isal" / "browser-artifacts"


@pytest.fixture
def browser(label_studio, tmp_path, request):
    shots = tmp_path / "screenshots"
    b = Browser(label_studio.url, shots)
    yield b
    b.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        target = ARTIFACTS / request.node.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(shots, target)
        print(f"screenshots of each step: {target}")


def unlabeled_scores(ls, project_id: int, version: str) -> dict[int, tuple[float, list]]:
    """{task id: (score, result)} of the version's predictions on tasks nobody has annotated."""
    out = {}
    for task in ls.tasks.list(project=project_id, fields="all", page_size=500):
        mine = [p for p in task.predictions or [] if p.model_version == version]
        if mine and not task.annotations:
            out[task.id] = (mine[0].score, mine[0].result)
    return out


def test_the_first_hour_in_the_label_studio_ui(label_studio, browser, tmp_path):
    ls = label_studio.client()
    sub, images = cifar_images(label_studio.files_root, 30, 6, seed=4)
    pid, by_task, _ = create_cifar_project(ls, label_studio.files_root, sub, images, "first hour")
    for task, image in by_task.items():
        if image.split == "test":
            ls.annotations.create(id=task, result=choice_result(image.label))
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.legacy_token,
           "MODEL_DIR": str(tmp_path / "models"), "ISAL_EPOCHS": "2", "ISAL_RETRAIN_EVERY": "0", "THREADS": "4"}
    with BackendProcess(env, log_path=tmp_path / "backend.log") as backend:
        ls.ml.create(url=backend.url, project=pid, is_interactive=False, title="ISAL")
        browser.login(label_studio.username, label_studio.password)

        # Label a few tasks in the labeling screen; the untrained backend pre-ticks nothing.
        task = browser.open_labeling(pid)
        for _ in range(5):
            assert browser.ticked() == []
            task = browser.label(by_task[task].label)
        browser.shot("labeled five")
        locked = task  # left open in the labeling screen while the annotator goes to train

        answer = browser.start_training(pid)
        assert "Request Sent!" in answer
        status = wait_for_job(lambda p: requests.get(f"{backend.url}/status", params={"project": p},
                                                     timeout=10).json(), pid, timeout=300)
        assert status["last_error"] is None, status
        assert status["job"]["last_job"]["reason"] == "START_TRAINING" and status["counts"]["labeled"] == 5
        assert status["prelabel"]["on"] is False, status["prelabel"]  # 5 labels: far below 0.8 accuracy
        scores = unlabeled_scores(ls, pid, status["model_version"])
        assert scores and all(result == [] for _, result in scores.values())  # no guess written at all

        # "Label All Tasks": first the task still locked to this annotator, then ISAL's top task.
        assert browser.open_labeling(pid) == locked
        browser.shot("the locked task first")
        assert browser.ticked() == []
        served = browser.label(by_task[locked].label)
        browser.shot("the top task next")
        remaining = {t: s for t, (s, _) in unlabeled_scores(ls, pid, status["model_version"]).items()}
        assert served == min(remaining, key=remaining.get)
        if locked != status["top_task"]:
            assert served == status["top_task"]
        assert browser.ticked() == []  # below the threshold: no wrong guess pre-ticked


def test_the_project_page_draws_the_learning_curve_and_the_forecast(label_studio, browser, tmp_path):
    """After a real job, three earlier versions' (labels, metric) are written into the project's history, as if
    it had been trained before (a forecast needs four versions; the fit itself is tests/test_forecast.py): the
    page in Chromium then shows the curve, the forecast curve, its band and the sentence that states them, and the
    map of the tasks (labeled, reference, the next batch) with data hygiene's counts."""
    import json

    from selenium.webdriver.common.by import By

    ls = label_studio.client()
    sub, images = cifar_images(label_studio.files_root, 16, 6, seed=9)
    pid, by_task, _ = create_cifar_project(ls, label_studio.files_root, sub, images, "project page")
    train = [t for t, im in by_task.items() if im.split == "train"]
    for t, im in by_task.items():
        if im.split == "test" or t in train[:6]:
            ls.annotations.create(id=t, result=choice_result(im.label))
    models = tmp_path / "models"
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.legacy_token,
           "MODEL_DIR": str(models), "ISAL_COLD_START": "off", "ISAL_RETRAIN_EVERY": "0"}
    with BackendProcess(env, log_path=tmp_path / "backend.log") as backend:
        status = lambda p: requests.get(f"{backend.url}/status", params={"project": p}, timeout=10).json()  # noqa
        schema = ls.projects.get(id=pid).label_config
        setup = {"project": str(pid), "schema": schema}
        requests.post(f"{backend.url}/setup", json=setup, timeout=30).raise_for_status()
        requests.post(f"{backend.url}/train", json={"project": str(pid)}, timeout=30).raise_for_status()
        done = wait_for_job(status, pid, timeout=300)
        assert done["last_error"] is None, done
        history = models / str(pid) / "history.jsonl"
        (latest,) = [json.loads(line) for line in history.read_text().splitlines()]
        # metric = 1 - 0.8 n^-0.5 with a little noise: 0.9 at about 64 labels, with a band around it
        curve = [(n, round(1 - 0.8 * n ** -0.5 + d, 4)) for n, d in ((1, 0.01), (2, -0.01), (4, 0.01))]
        earlier = [{**latest, "version": f"earlier-{n}", "labeled": n, "metric": m} for n, m in curve]
        latest = {**latest, "metric": round(1 - 0.8 * latest["labeled"] ** -0.5, 4)}
        history.write_text("".join(json.dumps(h) + "\n" for h in [*earlier, latest]))
        browser.driver.get(f"{backend.url}/projects/{pid}")
        browser.shot("project page")
        for gid in ("learning-curve", "forecast-curve", "forecast-band"):
            assert browser.driver.find_elements(By.ID, gid), gid
        sentence = browser.driver.find_element(By.ID, "forecast").text
        assert "reaches 0.9 at about" in sentence and "80 % band" in sentence, sentence
        # the map of the tasks: the 6 labeled are all among the review's 20 most suspicious, the 10 left all next
        for gid in ("task-map", "map-suspect", "map-reference", "map-next"):
            assert browser.driver.find_elements(By.ID, gid), gid
        assert "near-duplicate groups" in browser.driver.find_element(By.ID, "hygiene").text
