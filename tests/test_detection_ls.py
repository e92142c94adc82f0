"""Object detection end to end against a real Label Studio: BCCD images uploaded as files,
rectangle annotations in, FCOS trained, rectangle predictions with influence scores out,
/next serving the top-ranked task, the review per box (the tab: tasks by their worst box), and a
second training giving a new version and order."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import requests

from backend.labelstudio.client import LabelStudioAPI
from backend.tasktypes.rectangle_labels import rectangle_config
from backend.tasktypes.rectangles import rectangle_results
from isal_core.data.boxes import load_voc

try:
    from backend_helpers import wait_for_job
    from test_backend_app import make_app
    from test_review_ls import review_tab
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import wait_for_job
    from tests.test_backend_app import make_app
    from tests.test_review_ls import review_tab

pytestmark = pytest.mark.integration

try:
    from needs import BCCD_ZIP as BCCD
except ImportError:  # tests/ imported as a package
    from tests.needs import BCCD_ZIP as BCCD
N_IMAGES, N_LABELED = 24, 10


def upload(label_studio, pid: int, records) -> dict[int, object]:
    """The images as file uploads (Label Studio's import with files); {task id: record}."""
    files = []
    with zipfile.ZipFile(BCCD) as z:
        for i, r in enumerate(records):  # one form field per file: Label Studio reads each field once
            files.append((f"file{i}", (Path(r.id).name, io.BytesIO(z.read(r.path.split(".zip/", 1)[1])), "image/jpeg")))
    headers = {"Authorization": f"Token {label_studio.legacy_token}"}
    r = requests.post(f"{label_studio.url}/api/projects/{pid}/import", files=files, headers=headers, timeout=120)
    assert r.status_code == 201, r.text
    by_name = {Path(rec.id).name: rec for rec in records}
    tasks = list(label_studio.client().tasks.list(project=pid, fields="all", page_size=500))
    assert len(tasks) == len(records)
    return {t.id: by_name[next(n for n in by_name if t.data["image"].endswith(n))] for t in tasks}


@pytest.mark.needs("bccd")
def test_rectangles_in_fcos_trained_rectangle_predictions_out_and_next_serves_the_top(label_studio, tmp_path):
    records, classes = load_voc(BCCD)
    records = records[:N_IMAGES]
    ls = label_studio.client()
    pid = ls.projects.create(title="bccd detection", label_config=rectangle_config(classes)).id
    by_task = upload(label_studio, pid, records)
    ids = sorted(by_task)

    def annotate(task_id):
        r = by_task[task_id].label
        regions = rectangle_results(r["boxes"], [classes[i] for i in r["labels"]], [1.0] * len(r["boxes"]), 640, 480,
                                    "label", "image")
        ls.annotations.create(id=task_id, result=[{k: v for k, v in g.items() if k != "score"} for g in regions])

    for t in ids[:N_LABELED]:
        annotate(t)
    zebra = {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 640,
             "original_height": 480, "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 0,
                                               "rectanglelabels": ["zebra"]}}
    ls.annotations.create(id=ids[N_LABELED], result=[zebra])  # labeled, its only box is skipped: no objects
    engine = {"epochs": 1, "min_steps": 16, "batch_size": 4, "lr": 0.005, "min_size": 96, "max_size": 128,
              "score_threshold": 0.05, "retrain_every": 0, "min_labeled": 4, "prelabel": "always"}
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine=engine)
    c = app.test_client()
    setup = c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    assert setup.status_code == 200, setup.json
    api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)

    def train(n):
        assert c.post("/train", json={"project": f"{pid}.0"}).status_code == 202
        status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, jobs_started=n, timeout=600)
        assert status["last_error"] is None, status
        assert status["reference_metric"]["name"] == "mAP@0.5" and 0 <= status["reference_metric"]["value"] <= 1
        version = status["model_version"]
        scores, boxes = {}, 0
        review = c.get(f"/review?project={pid}").json
        found = review["tasks"]  # detection: the boxes, each with its task, most suspicious first
        # (job 1 reviews nothing: its labeled set is R, L1; job 2 the task annotated after it)
        assert [b["review_score"] for b in found] == sorted(b["review_score"] for b in found)
        if found:  # ISAL_REVIEW_SIGNAL=auto: detection's boxes by the model's disagreement
            assert review["signal"] == "loss"
            assert [b["loss"] for b in found] == sorted((b["loss"] for b in found), reverse=True)
        assert all(b["annotated"] in classes and (b["model"] is None or b["model"] in classes) for b in found)
        assert (n > 1) <= len(found) <= sum(len(by_task[t].label["boxes"]) for t in {b["task"] for b in found})
        for b in found:  # each box is the task's annotated box, with its class
            record = by_task[b["task"]].label
            (j,) = [j for j, xy in enumerate(record["boxes"])
                    if max(abs(u - v) for u, v in zip(xy, b["annotated_box"])) < 1]
            assert classes[record["labels"][j]] == b["annotated"]
        with_boxes = list(dict.fromkeys(b["task"] for b in found))  # a task where its worst box is
        tab = review_tab(ls, api, pid) if n > 1 else []  # tasks by their worst box, then any with no box
        assert review["model_version"] == version and len(tab) == status["counts"]["reviewed"]
        assert tab[:len(with_boxes)] == with_boxes and set(tab[len(with_boxes):]) <= {ids[N_LABELED]}
        reviewed = set(tab)
        for task in ls.tasks.list(project=pid, fields="all", page_size=500):
            mine = [p for p in task.predictions or [] if p.model_version == version]
            if task.annotations:  # labeled: a review prediction (the model's boxes) on the reviewed ones only
                assert len(mine) == (task.id in reviewed), (task.id, reviewed)
                continue
            (p,) = mine
            scores[task.id] = p.score
            boxes += len(p.result)
            for region in p.result:
                assert region["type"] == "rectanglelabels" and region["value"]["rectanglelabels"][0] in classes
                assert 0 <= region["value"]["x"] <= 100 and 0 < region["score"] <= 1
                assert region["original_width"] == 640 and region["original_height"] == 480
        assert boxes > 0  # the model's boxes, pre-drawn for the annotator
        assert len(scores) == N_IMAGES - N_LABELED - 1 - 1 * (n - 1) and all(0 <= s <= 1 for s in scores.values())
        assert scores[status["top_task"]] == min(scores.values())
        assert api.next_task(pid)["id"] == status["top_task"]
        return status, scores

    status, scores1 = train(1)
    assert status["warnings"]["region_skipped"]["count"] == 1 and "'zebra'" in \
        status["warnings"]["region_skipped"]["examples"][0]
    assert status["counts"]["labeled"] == N_LABELED + 1 and status["task_type"]["kind"] == "object_detection"
    top1, v1 = status["top_task"], status["model_version"]
    annotate(top1)
    status, scores2 = train(2)
    assert status["model_version"] != v1
    common = sorted(set(scores1) & set(scores2))
    assert sorted(common, key=scores1.get) != sorted(common, key=scores2.get)  # a new order
    api.close()
