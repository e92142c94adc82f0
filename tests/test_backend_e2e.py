"""End to end: Label Studio <-> the ISAL backend under gunicorn, as a user runs them.

One Label Studio for the session; per token kind (legacy token, personal access token)
one backend process and one CIFAR-10 project: connect the backend, annotate, press
"Start training" through Label Studio's own API, and check that Label Studio now serves
the task the backend ranked first; annotate it, train again, check again; restart the
backend and check it serves the newest model.
"""
from __future__ import annotations

import time

import pytest
import requests

from backend.labelstudio.client import LabelStudioAPI
from backend.tools.servers import BackendProcess

try:
    from backend_helpers import choice_result, cifar_images, create_cifar_project, wait_for_job
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import choice_result, cifar_images, create_cifar_project, wait_for_job

pytestmark = pytest.mark.integration

N_TRAIN, N_REFERENCE, N_LABELED = 200, 24, 40


#: Per token kind, the pre-labeling case it covers: the default policy with a 3-epoch model far below
#: its 0.8 threshold (no guess in any prediction), and a threshold of 0 (every prediction carries one).
PRELABEL = {"legacy": {}, "pat": {"ISAL_PRELABEL_MIN_METRIC": "0"}}


def backend_env(label_studio, token: str, model_dir, **extra) -> dict:
    return {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": token, "MODEL_DIR": str(model_dir),
        "ISAL_EPOCHS": "3", "ISAL_RETRAIN_EVERY": "1000", "ISAL_SEED": "0", "THREADS": "4", "LOG_LEVEL": "INFO",
        **extra,
    }


def get_status(backend: BackendProcess):
    return lambda pid: requests.get(f"{backend.url}/status", params={"project": pid}, timeout=10).json()


def predictions_of(ls, project_id: int, version: str) -> tuple[dict, dict, list]:
    """({unlabeled task id: [predictions of version]}, {labeled task id: [...]}, all tasks)."""
    tasks = list(ls.tasks.list(project=project_id, fields="all", page_size=500))
    unlabeled, labeled = {}, {}
    for t in tasks:
        mine = [p for p in t.predictions or [] if p.model_version == version]
        (labeled if t.annotations else unlabeled)[t.id] = mine
    return unlabeled, labeled, tasks


def check_round(ls, api: LabelStudioAPI, project_id: int, status: dict, classes: set, prelabel: bool) -> int:
    """Every unlabeled task holds exactly one prediction of the new version (with the model's guess
    exactly when `prelabel`), the project uses that version, and /next serves the backend's top
    task, which has the lowest score. Returns it."""
    version = status["model_version"]
    unlabeled, labeled, tasks = predictions_of(ls, project_id, version)
    assert unlabeled and all(len(p) == 1 for p in unlabeled.values()), \
        {t: len(p) for t, p in unlabeled.items() if len(p) != 1}
    reference = {t.id for t in tasks if t.data.get("isal_reference")}
    assert all(not labeled[t] for t in reference & set(labeled)), "reference tasks get no prediction"
    reviewed = {t: p for t, p in labeled.items() if t not in reference}
    assert all(len(p) == 1 for p in reviewed.values()), "each trained-on task: one review prediction"
    assert len(reviewed) == status["counts"]["reviewed"]
    scores = {t: p[0].score for t, p in unlabeled.items()}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert status["prelabel"]["on"] is prelabel and status["prelabel"]["policy"] == "auto"
    assert status["reference_metric"]["name"] == "accuracy" and 0 <= status["reference_metric"]["value"] <= 1
    for p in unlabeled.values():
        if prelabel:
            (choice,) = p[0].result[0]["value"]["choices"]
            assert choice in classes
        else:
            assert p[0].result == [], "below the threshold no guess is written, so none is pre-ticked"
    assert len(set(scores.values())) > len(scores) // 2, "scores must rank, not tie"
    assert ls.projects.get(id=project_id).model_version == version
    top = status["top_task"]
    assert scores[top] == min(scores.values()) == pytest.approx(status["top_score"])
    served = api.next_task(project_id)
    assert served is not None and served["id"] == top
    return top


@pytest.mark.parametrize("token_kind", ["legacy", "pat"])
def test_training_round_trip_serves_the_top_influence_task(label_studio, token_kind, tmp_path):
    t0 = time.monotonic()

    def lap(what):
        print(f"[e2e {token_kind}] {time.monotonic() - t0:6.1f} s  {what}", flush=True)

    token = label_studio.token(token_kind)
    ls = label_studio.client(token_kind)
    sub, images = cifar_images(label_studio.files_root, N_TRAIN, N_REFERENCE, seed=1)
    pid, by_task, _ = create_cifar_project(ls, label_studio.files_root, sub, images, f"e2e {token_kind}")
    classes = {im.label for im in images}
    reference = [t for t, im in by_task.items() if im.split == "test"]
    pool = [t for t, im in by_task.items() if im.split == "train"]
    assert len(by_task) >= 200 and len(reference) >= 20
    for t in reference:
        ls.annotations.create(id=t, result=choice_result(by_task[t].label))
    lap("project created")
    prelabel = bool(PRELABEL[token_kind])
    backend = BackendProcess(backend_env(label_studio, token, tmp_path / "models", **PRELABEL[token_kind]),
                             log_path=tmp_path / "backend.log").start()
    lap("backend started")
    try:
        ml = ls.ml.create(url=backend.url, project=pid, is_interactive=False, title="ISAL")
        assert get_status(backend)(pid)["task_type"]["classes"] == sorted(classes)
        status = wait_for_job(get_status(backend), pid, jobs_started=1)  # connecting: the default's cold start
        assert status["last_error"] is None and status["kind"] == "cold_start", status
        cold = status["model_version"]

        for t in pool[:N_LABELED]:
            ls.annotations.create(id=t, result=choice_result(by_task[t].label))
        # Label Studio delivered every annotation webhook to the backend, which counted them.
        assert get_status(backend)(pid)["job"]["events_since_request"] == N_LABELED
        lap("annotated")

        ls.ml.train(id=ml.id)  # the "Start training" button
        status = wait_for_job(get_status(backend), pid, jobs_started=2)
        lap("trained (1)")
        assert status["last_error"] is None, status
        v1 = status["model_version"]
        assert v1.startswith(f"isal-{pid}-") and status["reference_source"] == "isal_reference"
        assert status["counts"]["labeled"] == N_LABELED
        assert status["counts"]["reference"] == N_REFERENCE
        assert status["counts"]["unlabeled"] == N_TRAIN - N_LABELED
        api = LabelStudioAPI(label_studio.url, token)
        top1 = check_round(ls, api, pid, status, classes, prelabel)
        lap("checked (1)")

        # Round 2: annotate the served task and a few more, train again.
        for t in [top1] + [t for t in pool[N_LABELED:] if t != top1][:5]:
            ls.annotations.create(id=t, result=choice_result(by_task[t].label))
        ls.ml.train(id=ml.id)
        status = wait_for_job(get_status(backend), pid, jobs_started=3)
        assert status["last_error"] is None, status
        v2 = status["model_version"]
        assert v2 != v1 and status["counts"]["labeled"] == N_LABELED + 6
        top2 = check_round(ls, api, pid, status, classes, prelabel)
        lap("trained and checked (2)")
        assert top2 != top1
        assert requests.get(f"{backend.url}/versions", params={"project": pid}, timeout=10).json()["versions"] == \
            [v2, v1, cold]

        # Restart: the newest model comes back, and /predict answers with it.
        backend.stop()
        backend.start()
        lap("restarted")
        restarted = get_status(backend)(pid)
        assert restarted["model_version"] == v2 and restarted["top_task"] == top2
        stored = {t: p[0].score for t, p in predictions_of(ls, pid, v2)[0].items()}
        labeled_task = ls.tasks.get(id=pool[0])  # not in the pool: scored afresh from its image
        unlabeled_task = ls.tasks.get(id=top2)
        r = requests.post(f"{backend.url}/predict", timeout=60, json={
            "project": f"{pid}.0", "tasks": [unlabeled_task.model_dump(mode="json"),
                                             labeled_task.model_dump(mode="json")]})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["model_version"] for x in results] == [v2, v2]
        assert results[0]["score"] == pytest.approx(stored[top2])
        assert 0.0 < results[1]["score"] < 1.0
        if prelabel:
            assert results[1]["result"][0]["value"]["choices"][0] in classes
        else:
            assert results[1]["result"] == []
        api.close()
    finally:
        backend.stop()
        print(f"[e2e {token_kind}] {time.monotonic() - t0:.1f} s; backend log tail:\n{backend.log_tail(1500)}")
