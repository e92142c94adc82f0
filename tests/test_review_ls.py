"""Annotation review against a real Label Studio: the review tab lists the annotated tasks only, in the order of
/review, after one job and after the next; /next still serves the unlabeled tasks in the backend's order; the
latest of two annotations is the one reviewed; odd projects get clear answers, never a failed job."""
from __future__ import annotations

import numpy as np
import pytest

from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.views import REVIEW_VIEW, views

try:
    from backend_helpers import choice_result, frozen_project, wait_for_job
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import choice_result, frozen_project, wait_for_job
    from tests.test_backend_app import make_app

pytestmark = pytest.mark.integration
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def backend(label_studio, tmp_path, weights):
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"retrain_every": 0})
    return app, app.extensions["isal"], app.test_client()


def review_tab(ls, api: LabelStudioAPI, pid: int) -> list[int]:
    (view,) = [v for v in views(api, pid) if (v.get("data") or {}).get("title") == REVIEW_VIEW["title"]]
    return [t.id for t in ls.tasks.list(project=pid, view=view["id"], page_size=500)]


def test_the_review_tab_is_the_review_and_next_still_serves_the_pool(label_studio, tmp_path):
    ls = label_studio.client()
    pid, by_task, train, weights = frozen_project(label_studio, tmp_path, 30, 12, 8, "review")
    wrong = {t: CLASSES[(CLASSES.index(by_task[t].label) + 1) % 10] for t in train[:3]}
    for t, label in wrong.items():  # annotated twice: the second, wrong one is the latest, and counts
        ls.annotations.create(id=t, result=choice_result(label))
    app, isal, c = backend(label_studio, tmp_path, weights)
    api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    for job in (1, 2):
        status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, jobs_started=job, timeout=300)
        assert status["last_error"] is None and status["kind"] == "round", status
        review = c.get(f"/review?project={pid}").json
        assert review["model_version"] == status["model_version"] and review["signal"] == "oof_combined"  # frozen
        order = [t["task"] for t in review["tasks"]]
        labeled = {t.id for t in ls.tasks.list(project=pid, fields="all", page_size=500) if t.annotations}
        reference = {t for t, im in by_task.items() if im.split == "test"}
        assert set(order) == labeled - reference and len(order) == status["counts"]["reviewed"]
        assert review_tab(ls, api, pid) == order  # annotated tasks only, most suspicious first
        annotated = {t["task"]: t["annotated"] for t in review["tasks"]}
        assert all(annotated[t] == label for t, label in wrong.items())  # the latest annotation
        with np.load(isal.model_dir.known(pid).current.path / "scores.npz") as z:
            intended = int(z["task_ids"][np.argmin(z["scores"])])
        served = api.next_task(pid)["id"]
        assert served == intended and served not in labeled
        ls.annotations.create(id=served, result=choice_result(by_task[served].label))
        c.post("/train", json={"project": f"{pid}.0"})
    api.close()


def test_odd_projects_get_clear_review_answers_and_no_failed_job(label_studio, tmp_path):
    ls = label_studio.client()
    # one labeled task (besides R): below min_labeled, a cold start, and nothing to review yet
    pid, _, _, weights = frozen_project(label_studio, tmp_path, 12, 1, 9, "review one")
    app, _, c = backend(label_studio, tmp_path, weights)
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, timeout=300)
    assert status["last_error"] is None and status["kind"] == "cold_start" and status["review"] is None, status
    review = c.get(f"/review?project={pid}").json
    assert review["tasks"] == [] and review["note"].startswith("this version reviewed nothing (a cold start")
    # every training label of one class (R keeps its own): the job trains, and reviews them all
    (tmp_path / "one-class").mkdir()
    pid, _, train, _ = frozen_project(label_studio, tmp_path / "one-class", 12, 0, 10, "review cat")
    for t in train[:6]:
        ls.annotations.create(id=t, result=choice_result("cat"))
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, timeout=300)
    assert status["last_error"] is None and status["kind"] == "round", status
    review = c.get(f"/review?project={pid}").json
    assert sorted(t["task"] for t in review["tasks"]) == sorted(train[:6])
    assert {t["annotated"] for t in review["tasks"]} == {"cat"}
    # unknown project, bad limit: answers, not errors of the server
    assert c.get("/review?project=999999").status_code == 404
    assert c.get(f"/review?project={pid}&limit=0").status_code == 400
    assert len(c.get(f"/review?project={pid}&limit=2").json["tasks"]) == 2
