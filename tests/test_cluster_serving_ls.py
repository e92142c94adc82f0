"""One order everywhere, against a real Label Studio: for isal_batch served by cluster (frozen features),
20 consecutive /next calls, an annotation after each, serve the first task of the
Data Manager tab sorted by score, and that is the backend's own order (the version's scores.npz); with
predictions written for only the first tasks of that order (LS_PREDICTIONS_PER_VERSION), the others sort last."""
from __future__ import annotations

import numpy as np
import pytest

from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.views import create_view

try:
    from backend_helpers import choice_result, frozen_project, wait_for_job
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import choice_result, frozen_project, wait_for_job
    from tests.test_backend_app import make_app

pytestmark = pytest.mark.integration
UNLABELED = {"conjunction": "and", "items": [
    {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]}


def test_next_the_data_manager_and_the_backend_serve_one_order(label_studio, tmp_path):
    ls = label_studio.client()
    pid, by_task, _, weights = frozen_project(label_studio, tmp_path, 40, 6, 6, "one order")
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   ls_predictions_per_version=25,  # of the 34 unlabeled tasks
                   engine={"retrain_every": 0, "clusters": 4, "strategy": "isal_batch"})  # served by cluster
    c = app.test_client()
    # connecting the project is what asks for the first job (a cold start, or here, with labels, a training)
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, timeout=300)
    assert status["last_error"] is None and status["strategy"] == "isal_batch", status
    version = app.extensions["isal"].model_dir.known(pid).current
    with np.load(version.path / "scores.npz") as z:
        intended = [int(t) for t in z["task_ids"][np.argsort(z["scores"], kind="stable")]]
        by_influence = [int(t) for t in z["task_ids"][np.argsort(z["influence"], kind="stable")]]
    assert intended[:20] != by_influence[:20]  # diversity changed the order, and it is in the score
    predicted = set()
    for task in ls.tasks.list(project=pid, fields="all", page_size=500):
        assert all(p.cluster is None for p in task.predictions or [])  # every prediction: the bulk import
        predicted |= {task.id for p in task.predictions or [] if p.model_version == version.name}
    assert len(intended) == status["counts"]["unlabeled"] == 34
    assert status["job"]["last_job"]["predictions_written"] == 25 + min(25, status["counts"]["reviewed"])
    assert predicted & set(intended) == set(intended[:25])  # the first 25 of the order only

    api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)
    view = create_view(api, pid, "by score", ordering=["tasks:predictions_score"], visible=["tasks:id"],
                       filters=UNLABELED)
    served, first_in_tab = [], []
    for _ in range(20):
        first_in_tab.append(next(iter(ls.tasks.list(project=pid, view=view, page_size=1))).id)
        task = api.next_task(pid)
        served.append(task["id"])
        ls.annotations.create(id=task["id"], result=choice_result(by_task[task["id"]].label))
    api.close()
    assert served == first_in_tab == intended[:20]
