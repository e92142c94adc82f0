"""Against a real Label Studio: with predictions carrying clusters, consecutive /next calls (an
annotation after each) follow the emulated rule (isal_core.selection.serving) exactly."""
from __future__ import annotations

from collections import Counter

import pytest

from backend.labelstudio.client import LabelStudioAPI
from isal_core.selection.serving import serving_order

try:
    from backend_helpers import choice_result, frozen_project, wait_for_job
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import choice_result, frozen_project, wait_for_job
    from tests.test_backend_app import make_app

pytestmark = pytest.mark.integration


def test_label_studio_serves_the_best_task_of_the_least_labeled_cluster(label_studio, tmp_path):
    ls = label_studio.client()
    pid, by_task, _, weights = frozen_project(label_studio, tmp_path, 40, 6, 6, "cluster serving")
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"arch": "resnet18", "weights": str(weights), "retrain_every": 0, "clusters": 4})
    c = app.test_client()
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    assert c.post("/train", json={"project": f"{pid}.0"}).status_code == 202
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, timeout=300)
    assert status["last_error"] is None, status

    version = status["model_version"]
    pool = {}
    for task in ls.tasks.list(project=pid, fields="all", page_size=500):
        mine = [p for p in task.predictions or [] if p.model_version == version]
        if mine and not task.annotations:
            pool[task.id] = (mine[0].score, mine[0].cluster)
    ids = sorted(pool)
    assert len(set(cl for _, cl in pool.values())) >= 3
    expected = [ids[i] for i in serving_order([pool[t][0] for t in ids], [pool[t][1] for t in ids], Counter(), 20)]
    assert expected != sorted(ids, key=lambda t: pool[t][0])[:20]  # the clusters change the order

    api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)
    served = []
    for _ in range(20):
        task = api.next_task(pid)
        served.append(task["id"])
        ls.annotations.create(id=task["id"], result=choice_result(by_task[task["id"]].label))
    api.close()
    assert served == expected
