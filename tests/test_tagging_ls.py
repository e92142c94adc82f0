"""Multi-label tagging against a real Label Studio: a project of CIFAR-10 2x2 mosaics tagged with the classes they
show (five of the ten classes are tags: a mosaic of the other five has no tag, a valid answer; a sixth tag is never
used) connects, trains on the default frozen features, publishes tag predictions, /next serves the backend's order,
the review tab lists the annotated tasks in the review's order with each one's likeliest wrong and missing tag; an
annotation naming a tag outside the config is skipped and counted, never a failed job."""
from __future__ import annotations

import numpy as np
import pytest

from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.views import REVIEW_VIEW, views
from backend.tasktypes import tagging_config, tags_result
from isal_core.data.tags import read_tags, write_mosaics
from isal_core.tasks.multilabel import AUTO_STRATEGY

try:
    from backend_helpers import CIFAR_ZIP, wait_for_job
    from needs import need
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import CIFAR_ZIP, wait_for_job
    from tests.needs import need
    from tests.test_backend_app import make_app

pytestmark = pytest.mark.integration
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TAGS = CLASSES[:5]


def mosaics(root, sub: str, n: int) -> list[tuple[str, list[str]]]:
    """n 64x64 mosaics of four CIFAR-10 training images under root/sub (isal_core.data.tags): (path under root,
    the tags of TAGS shown)."""
    need("cifar10")
    write_mosaics(CIFAR_ZIP, root / sub, {"train": n})
    classes, records = read_tags(str(root / sub / "train.csv"))
    return [(f"{sub}/{r.id}", sorted({classes[t] for t in r.label} & set(TAGS))) for r in records]


def test_a_tagging_project_trains_publishes_tags_and_serves_its_order(label_studio, tmp_path):
    ls = label_studio.client()
    made = mosaics(label_studio.files_root, "mosaics-ls", 40)
    project = ls.projects.create(title="tagging", label_config=tagging_config(TAGS + ["zebra"]))  # zebra: never used
    ls.import_storage.local.create(project=project.id, path=str(label_studio.files_root / "mosaics-ls" / "train"),
                                   title="mosaics")
    data = [{"image": f"/data/local-files/?d={rel}", "isal_reference": k < 8} for k, (rel, _) in enumerate(made)]
    ids = list(ls.projects.import_tasks(id=project.id, request=data, return_task_ids=True).task_ids)
    tags = dict(zip(ids, (t for _, t in made)))
    labeled = ids[:20]  # 8 reference, 12 for training
    for t in labeled:
        ls.annotations.create(id=t, result=tags_result(tags[t]))
    assert any(not tags[t] for t in labeled), "the sample has a mosaic with no tag"
    bad = ids[20]
    ls.annotations.create(id=bad, result=[{"from_name": "tags", "to_name": "image", "type": "choices",
                                           "value": {"choices": ["unicorn"]}}])
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"retrain_every": 0, "prelabel": "always"})
    c = app.test_client()
    r = c.post("/setup", json={"project": f"{project.id}.0", "schema": ls.projects.get(id=project.id).label_config})
    assert r.status_code == 200, r.json
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, project.id, timeout=300)
    assert status["last_error"] is None and status["kind"] == "round", status
    assert status["task_type"]["kind"] == "image_tagging" and status["reference_metric"]["name"] == "mAP"
    assert status["strategy"] == AUTO_STRATEGY  # auto, for tagging
    assert status["counts"]["labeled"] == 12 and status["counts"]["reference"] == 8
    assert sum(w["count"] for w in status["warnings"].values()) >= 1  # the unicorn, skipped and counted
    api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)
    version = status["model_version"]
    predictions = [p for p in api.request("GET", "api/predictions/", params={"project": project.id}).json()
                   if p["model_version"] == version]
    unlabeled = set(ids[21:])
    published = {p["task"]: p for p in predictions if p["task"] in unlabeled}
    assert published, "the version's predictions of the unlabeled tasks"
    for p in published.values():  # the model's tags, each one of the config's (none ticked: an empty result)
        assert all(set(r["value"]["choices"]) <= set(TAGS) for r in p["result"])
    served = api.next_task(project.id)["id"]
    lowest = min(published.values(), key=lambda p: p["score"])["task"]
    assert served == lowest and served in unlabeled
    assert np.isfinite([p["score"] for p in published.values()]).all()
    (view,) = [v for v in views(api, project.id) if (v.get("data") or {}).get("title") == REVIEW_VIEW["title"]]
    listed = [t.id for t in ls.tasks.list(project=project.id, view=view["id"], page_size=500)]
    review = c.get(f"/review?project={project.id}").json  # the annotated training tasks, their tags by name
    assert listed == [t["task"] for t in review["tasks"]]  # the review tab: in the review's order
    assert {t["task"] for t in review["tasks"]} == set(ids[8:20])
    assert all(t["annotated"] == tags[t["task"]] for t in review["tasks"])
    assert all(set(t["model"]) <= set(TAGS) for t in review["tasks"])
    for t in review["tasks"]:  # per tag: the ticked tag believed least, the unticked one believed most
        assert (t["wrong_tag"] is None) == (not tags[t["task"]]) and (t["missing_tag"] is None) == (len(
            tags[t["task"]]) == len(TAGS) + 1)  # (zebra is never ticked)
        assert t["wrong_tag"] is None or t["wrong_tag"]["tag"] in tags[t["task"]]
        assert t["missing_tag"] is None or t["missing_tag"]["tag"] not in tags[t["task"]]
    asked = [{"id": ids[30], "data": data[30]}, {"id": 10**6, "data": data[31]}]  # a job's task, and one it never saw
    results = c.post("/predict", json={"project": f"{project.id}.0", "tasks": asked}).json["results"]
    assert [r["model_version"] for r in results] == [version, version]
    for r in results:
        assert 0 <= r["score"] <= 1 and all(set(x["value"]["choices"]) <= set(TAGS) for x in r["result"])
