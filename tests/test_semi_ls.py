"""The semi learner against a real Label Studio: a job with ISAL_LEARNER=semi publishes (and says which learner),
/next serves its order, its model is not the supervised head's, and the backend creates no annotation
(pseudo-labels live only inside the fit)."""
from __future__ import annotations

import numpy as np
import pytest

from backend.labelstudio.client import LabelStudioAPI

try:
    from backend_helpers import frozen_project, wait_for_job
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import frozen_project, wait_for_job
    from tests.test_backend_app import make_app

pytestmark = pytest.mark.integration


def annotations(ls, pid: int) -> list[tuple[int, int]]:
    return sorted((t.id, a["id"]) for t in ls.tasks.list(project=pid, fields="all", page_size=500)
                  for a in t.annotations or [])


def job(label_studio, ls, pid: int, models, learner: str):
    app = make_app(models, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"retrain_every": 0, "learner": learner, "semi_neighbours": 5})
    c = app.test_client()
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, timeout=300)
    assert status["last_error"] is None and status["kind"] == "round", status
    assert status["model"]["learner"] == learner
    with np.load(app.extensions["isal"].model_dir.known(pid).current.path / "scores.npz") as z:
        return dict(zip(z["task_ids"].tolist(), z["predictions"].tolist())), int(z["task_ids"][np.argmin(z["scores"])])


def test_a_semi_job_publishes_serves_its_order_and_writes_no_annotation(label_studio, tmp_path):
    ls = label_studio.client()
    pid, _, _, _ = frozen_project(label_studio, tmp_path, 30, 12, 8, "semi")
    before = annotations(ls, pid)
    (tmp_path / "supervised").mkdir()
    supervised, _ = job(label_studio, ls, pid, tmp_path / "supervised", "supervised")
    semi, intended = job(label_studio, ls, pid, tmp_path, "semi")  # its version is the project's newest
    assert annotations(ls, pid) == before  # predictions only: nothing pseudo-labeled became an annotation
    assert semi.keys() == supervised.keys() and semi != supervised  # the pool changed what the head predicts
    api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)
    try:
        assert api.next_task(pid)["id"] == intended
    finally:
        api.close()
