"""The backend's HTTP layer with Flask's test client, and one job against a real Label Studio.

Everything above the `integration` marker runs without Label Studio: the protocol's
error paths, auth, the untrained answers, score encoding, and job coalescing (with a
stand-in job function, since what is tested is when jobs run, not what they do).
"""
from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.errors import JobError
from backend.job.publication import Publication
from backend.job.round import Clusters
from backend.labelstudio.score_encoding import UNSCORABLE_SCORE, place_scores
from backend.settings import EngineSettings, Settings
from backend.storage.projects import ModelDir
from backend.tasktypes import classification_config, parse_label_config
from backend.web.app import create_app
from isal_core.influence.params import select_parameters
from isal_core.influence.scorer import InfluenceScorer
from isal_core.nets.models import build_model

try:
    from backend_helpers import choice_result, cifar_images, create_cifar_project, frozen_project, wait_for_job
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import choice_result, cifar_images, create_cifar_project, frozen_project, wait_for_job

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<Choices name="label" toName="image"><Choice value="cat"/><Choice value="dog"/></Choices></View>')
PROJECT = "7.1700000000"


def make_app(tmp_path, run_job=None, **settings):
    engine = EngineSettings(**settings.pop("engine", {}))
    return create_app(Settings(model_dir=str(tmp_path / "models"), engine=engine, **settings), run_job=run_job)


@pytest.fixture
def client(tmp_path):
    app = make_app(tmp_path)
    c = app.test_client()
    assert c.post("/setup", json={"project": PROJECT, "schema": CONFIG}).status_code == 200
    return c


def test_health(tmp_path):
    r = make_app(tmp_path).test_client().get("/health")
    assert r.status_code == 200 and r.json["status"] == "UP"


@pytest.mark.parametrize("schema, says", [
    ('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
     '<Label value="cell"/></RectangleLabels><Choices name="c" toName="image"><Choice value="a"/>'
     '<Choice value="b"/></Choices></View>', "a <Choices> beside it would be left unlearned"),
    ('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
     '</RectangleLabels></View>', "no distinct static <Label>"),
    ('<View><Text name="text" value="$text"/><Choices name="c" toName="text"><Choice value="a"/>'
     '<Choice value="b"/></Choices></View>', "not one <Image>"),
    ('<View><Image name="image" value="$image"/><Choices name="t" toName="image" choice="multiple"></Choices>'
     '</View>', "dynamic or no choices"),
    (CONFIG.replace('<Choice value="dog"/>', ""), "fewer than two choices"),
    ("<View><Image name=", "cannot be parsed"),
    ("", "empty"),
])
def test_setup_rejects_unsupported_configs_with_a_readable_400(tmp_path, schema, says):
    c = make_app(tmp_path).test_client()
    r = c.post("/setup", json={"project": PROJECT, "schema": schema})
    assert r.status_code == 400
    assert says in r.json["error"]
    # Label Studio shows only "400 Client Error: <reason phrase> for url ...": the reason carries the message.
    assert r.status.startswith("400 Unsupported labeling config") and says.split("(")[0].strip() in r.status
    # The project was not registered.
    assert c.post("/predict", json={"project": PROJECT, "tasks": []}).status_code == 404


def test_setup_registers_the_project_and_answers_untrained(tmp_path, client):
    r = client.post("/setup", json={"project": PROJECT, "schema": CONFIG, "hostname": "http://ls:8080",
                                    "access_token": "abc", "extra_params": None})
    assert r.json == {"model_version": "untrained"}
    saved = json.loads((tmp_path / "models" / "7" / "project.json").read_text())
    assert saved["label_config"] == CONFIG and saved["task_type"]["classes"] == ["cat", "dog"]
    assert "abc" not in (tmp_path / "models" / "7" / "project.json").read_text()  # tokens stay in memory
    # A restarted backend still knows the project.
    again = make_app(tmp_path).test_client()
    assert again.get("/status?project=7").json["model_version"] == "untrained"


@pytest.mark.parametrize("route", ["/setup", "/predict", "/webhook", "/train"])
@pytest.mark.parametrize("body, says", [
    ('{"project": "7.1", "tasks": [', "not valid JSON"),
    ("", "empty"),
    ("[1, 2]", "must be a JSON object"),
])
def test_malformed_json_is_a_400(client, route, body, says):
    r = client.post(route, data=body, content_type="application/json")
    assert r.status_code == 400 and says in r.json["error"]


@pytest.mark.parametrize("route, payload", [
    ("/predict", {"project": "999.1700000000", "tasks": [{"id": 1, "data": {"image": "x.jpg"}}]}),
    ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 999}, "annotation": {"id": 1}}),
    ("/webhook", {"action": "START_TRAINING", "project": {"id": 999}}),
    ("/train", {"project": "999.1700000000"}),
])
def test_unknown_project_is_a_404_that_says_what_to_do(client, route, payload):
    r = client.post(route, json=payload)
    assert r.status_code == 404
    assert "project 999 is not connected" in r.json["error"] and "/setup" in r.json["error"]


@pytest.mark.parametrize("payload, says", [
    ({"tasks": []}, "no `project`"),
    ({"project": "abc", "tasks": []}, "not a Label Studio project reference"),
    ({"project": PROJECT, "tasks": {"id": 1}}, "`tasks` must be a list"),
])
def test_bad_predict_payloads_are_400(client, payload, says):
    r = client.post("/predict", json=payload)
    assert r.status_code == 400 and says in r.json["error"]


def test_webhook_without_action_is_400_and_other_actions_are_ignored(client):
    assert client.post("/webhook", json={"project": {"id": 7}}).status_code == 400
    r = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 7}})
    assert r.status_code == 200 and r.json["status"] == "ignored"


def test_basic_auth_is_enforced_on_every_route_but_health(tmp_path):
    c = make_app(tmp_path, basic_auth_user="ls", basic_auth_pass="s3cret").test_client()
    routes = [("GET", "/"), ("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"), ("POST", "/train"),
              ("GET", "/versions"), ("GET", "/status"), ("GET", "/metrics"), ("GET", "/openapi.json"),
              ("GET", "/nowhere")]
    for method, path in routes:
        for auth in (None, ("ls", "wrong"), ("LS", "s3cret"), ("ls", "s3cret "), ("", "")):
            r = c.open(path, method=method, json={"project": PROJECT}, auth=auth)
            assert r.status_code == 401, (method, path, auth)
            assert r.headers["WWW-Authenticate"].startswith("Basic") and "BASIC_AUTH_USER" in r.json["error"]
    health = c.get("/health")  # liveness stays open, and says nothing about the projects
    assert health.status_code == 200 and set(health.json) == {"status", "model_class"}
    assert c.get("/", auth=("ls", "s3cret")).status_code == 200
    assert c.post("/setup", json={"project": PROJECT, "schema": CONFIG}, auth=("ls", "s3cret")).status_code == 200


def test_basic_auth_needs_both_halves():
    with pytest.raises(ValueError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        Settings(basic_auth_user="ls")


def test_predict_before_training_answers_untrained_for_every_task(client):
    tasks = [{"id": 1, "data": {"image": "/data/upload/7/a.jpg"}}, {"id": 2, "data": {"text": "no image"}},
             {"id": 3, "data": {"image": "/data/upload/7/c.jpg"}}]
    r = client.post("/predict", json={"project": PROJECT, "tasks": tasks, "label_config": CONFIG,
                                      "params": {"context": None}})
    assert r.status_code == 200
    results = r.json["results"]
    assert len(results) == 3
    assert all(x["model_version"] == "untrained" and x["result"] == [] and x["score"] == 0.5 for x in results)
    assert "error" not in results[0] and "error" not in results[2]
    assert "task 2 has no image URL under data['image']" in results[1]["error"]


# ---------------------------------------------------------------------------
# a trained version, built on disk without Label Studio


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    """Images hosted outside Label Studio (absolute http URLs in task data are a real use case)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def publish_version(model_dir: Path, project_id: int = 7, task_ids=(1, 2, 3), influences=(-2.0, 0.5, 1.0),
                    cluster_source=None):
    """A real model version (untrained weights, random s_test) written the way a job writes it
    (with cluster_source "predictions": each task's cluster is its predicted class)."""
    project = ModelDir(model_dir).get(project_id)
    task_type = parse_label_config(CONFIG)
    project.register(CONFIG, task_type)
    torch.manual_seed(0)
    model = build_model("small_cnn", 2).eval()
    dim = sum(p.numel() for _, p in select_parameters(model, "weights"))
    s_test = torch.randn(dim) * 1e-3
    job = project.next_job_number()
    version = f"isal-{project_id}-{job}-test"
    meta = {"version": version, "job": job, "task_type": task_type.to_meta(), "score_encoding": "place",
            "params": "weights", "top_k": 1, "arch": "small_cnn", "num_classes": 2, "image_size": 32,
            "counts": {"labeled": 4, "reference": 2, "unlabeled": len(task_ids)}, "reference_source": "isal_reference",
            "top_task": task_ids[int(np.argmin(influences))], "cluster_source": cluster_source,
            "cluster_field": cluster_source is not None}
    predictions = [0, 1, 0]
    clusters = None if cluster_source is None else Clusters(None, predictions)
    names = [n for n, _ in select_parameters(model, "weights")]
    with Publication(project, None, version) as publication:  # on disk only: no Label Studio here
        publication.save(model, {"arch": "small_cnn", "num_classes": 2}, InfluenceScorer(s_test, names),
                         list(task_ids), list(influences), predictions, clusters,
                         scores=place_scores(np.argsort(influences, kind="stable"), len(task_ids)))
        publication.finish(meta)
    return project.current


def test_predict_with_a_model_scores_each_task_or_says_why_not(tmp_path, file_server):
    www, url = file_server
    Image.new("RGB", (40, 30), (200, 10, 10)).save(www / "new.jpg")
    (www / "broken.jpg").write_bytes(b"not a jpeg")
    version = publish_version(tmp_path / "models")
    c = make_app(tmp_path, label_studio_url="http://127.0.0.1:9", label_studio_api_key="0" * 40,
                 download_allowed_hosts=url.split("//")[1]).test_client()
    tasks = [
        {"id": 2, "data": {"image": "/data/upload/7/known.jpg"}},  # scored by the job: no download
        {"id": 50, "data": {"caption": "no image"}},
        {"id": 51, "data": {"image": f"{url}/new.jpg"}},  # arrived after the job: scored now
        {"id": 52, "data": {"image": f"{url}/missing.jpg"}},  # 404
        {"id": 53, "data": {"image": f"{url}/broken.jpg"}},  # not an image
        {"id": 1, "data": {"image": "/data/upload/7/top.jpg"}},
    ]
    r = c.post("/predict", json={"project": PROJECT, "tasks": tasks})
    assert r.status_code == 200, r.json
    res = r.json["results"]
    assert len(res) == len(tasks) and all(x["model_version"] == version.name for x in res)
    # the job's order by influence (-2, 0.5, 1 for tasks 1, 2, 3), as places: 1/4, 2/4, 3/4
    assert res[0]["score"] == pytest.approx(0.5) and res[5]["score"] == pytest.approx(0.25)
    assert res[0]["result"][0]["value"]["choices"] == ["dog"]
    assert res[1]["score"] == UNSCORABLE_SCORE and "no image URL" in res[1]["error"] and res[1]["result"] == []
    assert "error" not in res[2] and 0.0 < res[2]["score"] < 1.0
    assert res[2]["result"][0]["value"]["choices"][0] in ("cat", "dog")
    assert res[3]["score"] == UNSCORABLE_SCORE and "HTTP 404" in res[3]["error"]
    assert res[4]["score"] == UNSCORABLE_SCORE and "cannot decode image" in res[4]["error"]
    status = c.get("/status?project=7").json
    assert status["model_version"] == version.name and status["top_task"] == 1
    assert c.get("/versions?project=7").json["versions"] == [version.name]


def test_predictions_carry_the_predicted_class_as_cluster_without_frozen_features(tmp_path, file_server):
    """Cluster serving from scratch: /predict gives a task the job scored the job's cluster, and a
    task that arrived later its predicted class, as the job would have."""
    www, url = file_server
    Image.new("RGB", (40, 30), (10, 200, 10)).save(www / "new.jpg")
    publish_version(tmp_path / "models", cluster_source="predictions")
    c = make_app(tmp_path, label_studio_url="http://127.0.0.1:9", label_studio_api_key="0" * 40,
                 download_allowed_hosts=url.split("//")[1]).test_client()
    tasks = [{"id": 2, "data": {"image": "/data/upload/7/known.jpg"}}, {"id": 51, "data": {"image": f"{url}/new.jpg"}}]
    res = c.post("/predict", json={"project": PROJECT, "tasks": tasks}).json["results"]
    assert res[0]["cluster"] == 1 and res[0]["result"][0]["value"]["choices"] == ["dog"]
    predicted = ["cat", "dog"].index(res[1]["result"][0]["value"]["choices"][0])
    assert res[1]["cluster"] == predicted
    plain = publish_version(tmp_path / "models")  # a version without cluster serving: no cluster
    c = make_app(tmp_path, label_studio_url="http://127.0.0.1:9", label_studio_api_key="0" * 40).test_client()
    res = c.post("/predict", json={"project": PROJECT, "tasks": tasks}).json["results"]
    assert res[0]["model_version"] == plain.name and all("cluster" not in r for r in res)


def test_a_restart_loads_the_newest_complete_version(tmp_path):
    models = tmp_path / "models"
    older = publish_version(models)
    newer = publish_version(models)
    assert newer.meta["job"] > older.meta["job"]
    # An interrupted job leaves a temp dir; a torn version dir lacks files: neither is loaded.
    (models / "7" / ".tmp-isal-7-99-x").mkdir()
    torn = models / "7" / "isal-7-99-torn"
    torn.mkdir()
    (torn / "meta.json").write_text(json.dumps({**newer.meta, "version": "isal-7-99-torn", "job": 99}))
    # A version whose files are all there but whose checkpoint is garbage is skipped too.
    corrupt = publish_version(models)
    (corrupt.path / "model.pt").write_bytes(b"\x00" * 64)
    c = make_app(tmp_path).test_client()
    assert c.get("/status?project=7").json["model_version"] == newer.name
    assert not (models / "7" / ".tmp-isal-7-99-x").exists()
    r = c.post("/predict", json={"project": PROJECT, "tasks": [{"id": 3, "data": {"image": "/data/x.jpg"}}]})
    assert r.json["results"][0]["model_version"] == newer.name


def test_files_of_an_older_backend_are_refused_with_the_way_out(tmp_path):
    """No shims: a version whose scores lack the served order, or a scorer of another format, is not read; the
    message says to retrain, and a restart serves the newest version that reads."""
    from backend.storage.versions import ModelVersion
    from isal_core.errors import ModelError

    models = tmp_path / "models"
    good, old = publish_version(models), publish_version(models)
    with np.load(old.path / "scores.npz") as z:  # the sigmoid era kept no served scores
        np.savez(old.path / "scores.npz", task_ids=z["task_ids"], influence=z["influence"], output=np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="older backend .*retrain the project"):
        ModelVersion.open(old.path, verify=True)
    assert make_app(tmp_path).test_client().get("/status?project=7").json["model_version"] == good.name
    torch.save({"s_test": torch.zeros(3), "params": "weights"}, tmp_path / "s_test.pt")  # a set name, no format
    with pytest.raises(ModelError, match="older backend.*retrain the project"):
        InfluenceScorer.load(tmp_path / "s_test.pt")


def test_the_first_labeled_set_is_saved_once(tmp_path):
    project = ModelDir(tmp_path / "models").get(7)
    assert project.first_labeled_set([5, 3, 4]) == ([3, 4, 5], True)
    assert project.first_labeled_set([3, 4, 5, 6, 7]) == ([3, 4, 5], False)
    assert ModelDir(tmp_path / "models").get(7).first_labeled_set([9]) == ([3, 4, 5], False)


# ---------------------------------------------------------------------------
# score encoding


def test_the_served_score_is_strictly_monotone_in_the_served_order_and_inside_the_unit_interval():
    rng = np.random.default_rng(0)
    order = rng.permutation(50_005)  # a served order of a large pool, ties impossible
    scores = place_scores(order, len(order))
    assert np.all((scores > 0.0) & (scores < 1.0))  # Label Studio drops scores outside [0, 1]
    assert np.all(np.diff(scores[order]) > 0)  # strictly: Label Studio serves exactly this order
    assert np.array_equal(np.argsort(scores, kind="stable"), order)


def test_the_score_is_the_place_in_the_served_order_and_a_new_task_sits_by_its_nearest_influence():
    from backend.labelstudio.score_encoding import score_like

    order = [3, 0, 4, 1, 2]  # positions, first served first
    scores = place_scores(order, 5)
    assert np.array_equal(np.argsort(scores, kind="stable"), order) and scores.min() > 0 and scores.max() < 1
    assert len(set(scores.tolist())) == 5
    pool_influence = np.array([-1.0, 0.0, 1.0, -5.0, 3.0])
    assert score_like([-4.0, 0.9, 2.5, float("nan")], pool_influence, scores).tolist() == [
        scores[3], scores[2], scores[4], 0.5]
    assert score_like([1.0], [float("nan")], [0.3]).tolist() == [0.5]


# ---------------------------------------------------------------------------
# when jobs run


class GatedJob:
    """A stand-in job that blocks until released and records how many run at once."""

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.runs = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, project_id, set_phase):
        with self._lock:
            self.runs += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        set_phase("training")
        self.gate.wait(30)
        with self._lock:
            self.active -= 1
        return {"model_version": None, "counts": {}}


def test_annotation_storm_coalesces_into_one_running_and_one_pending_job(tmp_path):
    job = GatedJob()  # (no cold start: connecting would start a job of its own)
    app = make_app(tmp_path, run_job=job, engine={"retrain_every": 3, "cold_start": "off"})
    c = app.test_client()
    c.post("/setup", json={"project": PROJECT, "schema": CONFIG})
    r = c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
    assert r.status_code == 202 and r.json["job"] == "started"
    assert job.started.wait(10)

    def fire(i):
        action = "START_TRAINING" if i % 20 == 0 else ("ANNOTATION_CREATED", "ANNOTATION_UPDATED",
                                                        "ANNOTATIONS_DELETED")[i % 3]
        return app.test_client().post("/webhook", json={"action": action, "project": {"id": 7},
                                                        "annotation": {"id": i}}).status_code

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(fire, range(200)))
    assert time.monotonic() - t0 < 20  # replies do not wait for the job
    assert set(codes) <= {200, 202}
    status = c.get("/status?project=7").json["job"]
    assert status["state"] == "running" and status["pending"] is True and status["phase"] == "training"
    assert status["jobs_started"] == 1 and status["requests_coalesced"] > 0
    job.gate.set()
    assert app.extensions["isal"].jobs.wait_idle(7, 30)
    assert job.runs == 2 and job.max_active == 1
    assert c.get("/status?project=7").json["job"]["jobs_started"] == 2


def test_annotation_events_trigger_a_job_every_retrain_every(tmp_path):
    job = GatedJob()
    job.gate.set()
    app = make_app(tmp_path, run_job=job, engine={"retrain_every": 3, "cold_start": "off"})
    c = app.test_client()
    c.post("/setup", json={"project": PROJECT, "schema": CONFIG})
    hook = {"action": "ANNOTATION_CREATED", "project": {"id": 7}, "annotation": {"id": 1}, "task": {"id": 1}}
    assert [c.post("/webhook", json=hook).status_code for _ in range(2)] == [200, 200]
    assert job.runs == 0 and c.get("/status?project=7").json["job"]["events_since_request"] == 2
    r = c.post("/webhook", json=hook)
    assert r.status_code == 202 and r.json["job"] == "started"
    assert app.extensions["isal"].jobs.wait_idle(7, 10) and job.runs == 1


def test_the_served_queue_is_counted_and_a_job_starts_before_it_runs_dry(tmp_path):
    """A version predicted tasks 1-3 (the queue Label Studio serves from): each ANNOTATION_CREATED of one counts
    (an update, a task outside the queue or twice the same task do not); at a tenth left (here 1) a job is asked
    for though retrain_every is far off. /status, the page and /metrics show what remains."""
    job = GatedJob()
    job.gate.set()
    app = make_app(tmp_path, run_job=job, engine={"retrain_every": 100, "cold_start": "off"})
    c = app.test_client()
    c.post("/setup", json={"project": PROJECT, "schema": CONFIG})
    version = publish_version(tmp_path / "models")
    c.post("/setup", json={"project": PROJECT, "schema": CONFIG})  # (the app reads the new version)

    def hook(task, action="ANNOTATION_CREATED"):
        return c.post("/webhook", json={"action": action, "project": {"id": 7}, "annotation": {"id": task},
                                        "task": {"id": task}})

    queue = c.get("/status?project=7").json["served_queue"]
    assert queue == {"version": version.name, "predicted": 3, "labeled": 0, "remaining": 3, "low_water": 1}
    assert [hook(t).json["job"].startswith("counted") for t in (1, 1, 99)] == [True] * 3
    assert hook(1, "ANNOTATION_UPDATED").json["job"].startswith("counted")
    assert c.get("/status?project=7").json["served_queue"]["remaining"] == 2
    assert "Served queue: <b>2</b> of 3" in c.get("/projects/7").get_data(as_text=True)
    assert 'isal_served_queue_remaining{project="7"} 2.0' in c.get("/metrics").get_data(as_text=True)
    r = hook(2)
    assert r.status_code == 202 and r.json["job"] == "started"
    assert app.extensions["isal"].jobs.wait_idle(7, 10) and job.runs == 1
    reason = c.get("/status?project=7").json["job"]["last_job"]["reason"]
    assert reason == "the served queue runs dry: 1 of 3 predicted tasks left unlabeled"


def test_a_failing_job_is_reported_and_the_server_keeps_serving(tmp_path):
    def broken(project_id, set_phase):
        raise JobError("Label Studio refused the backend's API key (HTTP 401)")

    app = make_app(tmp_path, run_job=broken)
    c = app.test_client()
    c.post("/setup", json={"project": PROJECT, "schema": CONFIG})
    assert c.post("/train", json={"project": PROJECT}).status_code == 202
    assert app.extensions["isal"].jobs.wait_idle(7, 10)
    status = c.get("/status?project=7").json
    assert "HTTP 401" in status["last_error"] and status["job"]["last_job"]["status"] == "failed"
    assert status["model_version"] == "untrained"
    assert c.get("/health").status_code == 200
    tasks = [{"id": 1, "data": {"image": "a"}}]
    assert c.post("/predict", json={"project": PROJECT, "tasks": tasks}).status_code == 200


# ---------------------------------------------------------------------------
# a real job against a real Label Studio


@pytest.mark.integration
def test_job_skips_broken_tasks_counts_them_and_keeps_the_last_good_model(label_studio, tmp_path, caplog):
    ls = label_studio.client()
    sub, images = cifar_images(label_studio.files_root, 50, 10, seed=2)
    missing = [{"image": f"/data/local-files/?d={sub}/train/cat/gone-{i}.jpg", "isal_reference": False}
               for i in range(3)]
    pid, by_task, extra = create_cifar_project(ls, label_studio.files_root, sub, images, "bad input",
                                               extra_tasks=missing + [{"image": "", "note": "no image"}])
    train = [t for t, im in by_task.items() if im.split == "train"]
    for t, im in by_task.items():
        if im.split == "test" or t in train[:20]:
            ls.annotations.create(id=t, result=choice_result(im.label))
    ls.annotations.create(id=train[20], result=choice_result("zebra"))  # not in the config
    ls.annotations.create(id=extra[0], result=choice_result("cat"))  # labeled, but its image is gone
    ls.annotations.create(id=extra[1], result=choice_result("dog"))

    settings = {"label_studio_url": label_studio.url, "label_studio_api_key": label_studio.legacy_token,
                "engine": {"epochs": 2, "retrain_every": 0, "cold_start": "off"}}  # one job: START_TRAINING's
    app = make_app(tmp_path, **settings)
    c = app.test_client()
    schema = ls.projects.get(id=pid).label_config
    assert c.post("/setup", json={"project": f"{pid}.0", "schema": schema}).status_code == 200
    assert c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": pid}}).status_code == 202
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, timeout=300)
    assert status["last_error"] is None, status
    v1 = status["model_version"]
    assert v1.startswith(f"isal-{pid}-")
    warnings = status["warnings"]
    assert warnings["image_download_failed"]["count"] == 3 and "404" in warnings["image_download_failed"]["examples"][0]
    outside = warnings["label_outside_config"]
    assert outside["count"] == 1 and "'zebra'" in outside["examples"][0]
    assert warnings["no_image"]["count"] == 1
    counts = status["counts"]
    assert {k: counts[k] for k in ("labeled", "reference", "unlabeled", "reference_unlabeled", "skipped")} == {
        "labeled": 20, "reference": 10, "unlabeled": 29, "reference_unlabeled": 0, "skipped": 5}
    assert counts["reviewed"] == 20 and sum(counts["labels"].values()) == 20  # every labeled task, R apart
    assert sum(counts["reference_labels"].values()) == 10
    by_id = {t.id: t for t in ls.tasks.list(project=pid, fields="all")}
    scored = [t for t in by_id.values() if any(p.model_version == v1 for p in t.predictions)]
    assert len(scored) == 29 + 20 and extra[2] not in {t.id for t in scored}  # the pool and the review

    # The same MODEL_DIR with a key Label Studio refuses: the job fails, v1 stays and is served.
    bad_key = "badc0ffee" * 4 + "abcd"
    bad = make_app(tmp_path, **{**settings, "label_studio_api_key": bad_key}).test_client()
    assert bad.get(f"/status?project={pid}").json["model_version"] == v1
    assert bad.post("/webhook", json={"action": "START_TRAINING", "project": {"id": pid}}).status_code == 202
    status = wait_for_job(lambda p: bad.get(f"/status?project={p}").json, pid, timeout=120)
    assert status["model_version"] == v1 and "401" in status["last_error"], status
    assert status["job"]["last_job"]["status"] == "failed"
    assert bad.get("/health").status_code == 200
    one = next(t for t in scored)
    r = bad.post("/predict", json={"project": f"{pid}.0", "tasks": [one.model_dump(mode="json")]})
    assert r.status_code == 200 and r.json["results"][0]["model_version"] == v1
    assert ls.projects.get(id=pid).model_version == v1
    # neither key appears in what the backend says or logs, even about the refused one
    said = json.dumps([status, bad.get("/").json, bad.get("/status").json, r.json]) + bad.get("/metrics").text + \
        caplog.text
    assert bad_key not in said and label_studio.legacy_token not in said

    # Images too small for the architecture (a misconfiguration): the job says so before training, v1 stays.
    small = make_app(tmp_path, **{**settings, "engine": {"epochs": 2, "retrain_every": 0, "arch": "alexnet",
                                                         "weights": "none"}})  # from scratch at 32 px
    sc = small.test_client()
    assert sc.post("/webhook", json={"action": "START_TRAINING", "project": {"id": pid}}).status_code == 202
    status = wait_for_job(lambda p: sc.get(f"/status?project={p}").json, pid, timeout=120)
    assert status["model_version"] == v1 and "32 x 32 px are too small for alexnet" in status["last_error"], status
    assert "image_size (ISAL_IMAGE_SIZE, --image-size) 64 or more" in status["last_error"]
    assert ls.projects.get(id=pid).model_version == v1


@pytest.mark.integration
def test_without_reference_tasks_the_first_labeled_set_is_the_reference(label_studio, tmp_path):
    ls = label_studio.client()
    sub, images = cifar_images(label_studio.files_root, 30, 0, seed=3)
    pid, by_task, _ = create_cifar_project(ls, label_studio.files_root, sub, images, "no reference")
    ids = list(by_task)
    for t in ids[:10]:
        ls.annotations.create(id=t, result=choice_result(by_task[t].label))
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"epochs": 1, "retrain_every": 0})
    c = app.test_client()
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})

    def train(n):
        assert c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": pid}}).status_code == 202
        status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, jobs_started=n, timeout=300)
        assert status["last_error"] is None, status
        return status

    status = train(1)
    assert status["reference_source"] == "first_labeled_set" and "first labeled set L1" in status["reference_note"]
    assert status["counts"]["reference"] == 10 and status["counts"]["labeled"] == 10
    saved = json.loads((tmp_path / "models" / str(pid) / "reference_l1.json").read_text())["task_ids"]
    assert saved == sorted(ids[:10])
    for t in ids[10:13]:
        ls.annotations.create(id=t, result=choice_result(by_task[t].label))
    status = train(2)
    assert status["counts"]["reference"] == 10 and status["counts"]["labeled"] == 13  # L1 stays L1
    assert "saved by an earlier job" in status["reference_note"]


def test_settings_come_from_the_environment_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("PORT", "9191")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "abc")
    monkeypatch.setenv("ISAL_EPOCHS", "3")
    monkeypatch.setenv("ISAL_RETRAIN_EVERY", "0")
    s = Settings()
    assert (s.port, s.label_studio_api_key, s.engine.epochs, s.engine.retrain_every) == (9191, "abc", 3, 0)
    assert (s.engine.arch, s.engine.image_size, s.engine.strategy, s.engine.solver, s.engine.damping,
            s.engine.params, s.engine.seed) == ("efficientnet_lite0", 32, "auto", "cg", 0.1, "all", 0)
    for name, value in [("ISAL_STRATEGY", "bald"), ("ISAL_SOLVER", "svd"), ("ISAL_ARCH", "nope"),
                        ("ISAL_EPOCHS", "0")]:
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(ValueError, match=name.removeprefix("ISAL_").lower()):
                Settings()


def test_start_training_answers_with_the_job_and_where_to_watch_it(tmp_path):
    job = GatedJob()
    app = make_app(tmp_path, run_job=job, engine={"cold_start": "off"})  # (connecting starts no job)
    c = app.test_client()
    c.post("/setup", json={"project": PROJECT, "schema": CONFIG})
    first = c.post("/train", json={"project": PROJECT}).json
    assert first["job"] == "started" and first["job_number"] == 1
    assert first["message"].startswith("ISAL: training job 1 for project 7 started.")
    assert first["status_url"] == "http://localhost/status?project=7" and first["status_url"] in first["message"]
    assert job.started.wait(10)
    queued = c.post("/train", json={"project": PROJECT}).json
    assert queued["job"].startswith("pending") and queued["job_number"] == 2 and "queued" in queued["message"]
    joined = c.post("/train", json={"project": PROJECT}).json
    assert joined["job_number"] == 2 and "joins it" in joined["message"]
    job.gate.set()
    assert app.extensions["isal"].jobs.wait_idle(7, 30)


def test_setup_warns_when_the_choice_is_not_required(tmp_path, caplog):
    c = make_app(tmp_path).test_client()
    assert c.post("/setup", json={"project": PROJECT, "schema": CONFIG}).status_code == 200
    (warning,) = c.get("/status?project=7").json["config_warnings"]
    assert 'required="true"' in warning and warning in caplog.text
    required = CONFIG.replace('toName="image"', 'toName="image" required="true"')
    assert c.post("/setup", json={"project": PROJECT, "schema": required}).status_code == 200
    assert c.get("/status?project=7").json["config_warnings"] == []
    assert parse_label_config(classification_config(["cat", "dog"])).config_warnings() == []  # the demo's


@pytest.mark.integration
def test_frozen_features_are_embedded_once_across_jobs(label_studio, tmp_path):
    """Pretrained weights from a local file (made here) -> frozen features: the second job computes
    no embedding again, and /status says so."""
    ls = label_studio.client()
    pid, by_task, train, weights = frozen_project(label_studio, tmp_path, 24, 8, 5, "frozen features")
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"arch": "resnet18", "weights": str(weights), "retrain_every": 0, "damping": 0.1,
                           "cold_start": "off", "strategy": "isal_batch"})  # (its phases: scoring the pool)
    c = app.test_client()
    c.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})

    def job(n):
        assert c.post("/train", json={"project": f"{pid}.0"}).status_code == 202
        status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, jobs_started=n, timeout=300)
        assert status["last_error"] is None, status
        return status

    first = job(1)
    # 30 images embedded once; the labeled set read again as the training set comes from the cache
    assert first["job"]["last_job"]["embedding_cache"] == {"hits": 8, "computed": 30, "corrupt": 0}
    second = job(2)  # the same images: every embedding comes from the cache
    assert second["job"]["last_job"]["embedding_cache"] == {"hits": 30 + 8, "computed": 0, "corrupt": 0}
    phases = second["job"]["last_job"]["phases_s"]  # where the job's time went, phase by phase
    assert {"reading tasks", "downloading images", "embedding images", "training", "scoring the pool",
            "writing predictions", "deleting old predictions"} <= set(phases)
    assert all(s >= 0 for s in phases.values())
    assert second["model_version"] != first["model_version"]
    meta = json.loads((tmp_path / "models" / str(pid) / second["model_version"] / "meta.json").read_text())
    assert meta["adapter"] == "frozen" and meta["weights"] == str(weights)
    # /predict on a task imported after the job: scored with the version's own frozen backbone
    new = ls.tasks.get(id=train[-1]).model_dump(mode="json")
    new["id"] = 10**6
    r = c.post("/predict", json={"project": f"{pid}.0", "tasks": [new]})
    assert r.status_code == 200 and 0 < r.json["results"][0]["score"] < 1


@pytest.mark.integration
def test_a_backbone_changed_mid_project_keeps_the_published_version_working(label_studio, tmp_path):
    """ISAL_WEIGHTS changes between jobs: the published version keeps scoring with its own backbone,
    the next job embeds every image with the new one, and nothing is lost."""
    ls = label_studio.client()
    pid, by_task, train, weights = frozen_project(label_studio, tmp_path, 16, 6, 7, "backbone change")
    other = tmp_path / "other.pt"
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in torch.load(weights).items()}, other)
    engine = {"arch": "resnet18", "weights": str(weights), "retrain_every": 0, "damping": 0.1, "cold_start": "off"}
    first = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                     engine=engine).test_client()
    first.post("/setup", json={"project": f"{pid}.0", "schema": ls.projects.get(id=pid).label_config})
    assert first.post("/train", json={"project": f"{pid}.0"}).status_code == 202
    v1 = wait_for_job(lambda p: first.get(f"/status?project={p}").json, pid, timeout=300)["model_version"]

    second = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                      engine={**engine, "weights": str(other)}).test_client()
    new = ls.tasks.get(id=train[-1]).model_dump(mode="json")
    new["id"] = 10**6  # not in v1's pool: scored now, with v1's own backbone
    r = second.post("/predict", json={"project": f"{pid}.0", "tasks": [new]})
    assert r.status_code == 200 and r.json["results"][0]["model_version"] == v1
    assert 0 < r.json["results"][0]["score"] < 1
    assert second.post("/train", json={"project": f"{pid}.0"}).status_code == 202
    status = wait_for_job(lambda p: second.get(f"/status?project={p}").json, pid, timeout=300)
    assert status["last_error"] is None and status["model_version"] != v1
    assert status["job"]["last_job"]["embedding_cache"]["computed"] == 16 + 6  # the new backbone's own entries
    assert second.get(f"/versions?project={pid}").json["versions"] == [status["model_version"], v1]


def test_a_detection_task_without_a_box_above_the_threshold_is_served_after_the_scored(tmp_path):
    from backend.tasktypes.rectangle_labels import ObjectDetection, rectangle_config
    from isal_core.influence.scorer import PoolScores
    from isal_core.selection import influence_ranking
    from isal_core.tasks.detection import DetectionAdapter

    config = rectangle_config(["cell", "dot"])
    project = ModelDir(tmp_path / "models").get(7)
    task_type = parse_label_config(config)
    assert isinstance(task_type, ObjectDetection)
    project.register(config, task_type)
    adapter = DetectionAdapter(2, min_size=64, max_size=96, head_convs=1, fpn_channels=32)
    model = adapter.build_model()
    params = [n for n, _ in select_parameters(model, "head")]
    s_test = torch.zeros(sum(p.numel() for _, p in select_parameters(model, "head")))
    boxed = {"boxes": [[1.0, 2.0, 30.0, 40.0]], "labels": [1], "scores": [0.9], "size": [80, 96]}
    empty = {"boxes": [], "labels": [], "scores": [], "size": [80, 96]}
    job = project.next_job_number()
    meta = {"version": f"isal-7-{job}-det", "job": job, "task_type": task_type.to_meta(), "params": "head",
            "top_k": 1, **adapter.to_meta(), "counts": {}, "reference_source": "isal_reference", "top_task": 1}
    influences = [-1.0, -5.0]  # the box-less image has the lower influence, yet the engine ranks it last
    order = influence_ranking(PoolScores(torch.tensor(influences), [boxed, empty]), adapter, 0).order
    with Publication(project, None, meta["version"]) as publication:
        publication.save(model, adapter.to_meta(), InfluenceScorer(s_test, params), [1, 2], influences,
                         [boxed, empty], scores=place_scores(order.numpy(), 2))
        publication.finish(meta)
    c = make_app(tmp_path).test_client()
    tasks = [{"id": 1, "data": {"image": "/data/upload/7/a.jpg"}}, {"id": 2, "data": {"image": "/data/upload/7/b.jpg"}}]
    res = c.post("/predict", json={"project": PROJECT, "tasks": tasks}).json["results"]
    assert res[0]["score"] < res[1]["score"]  # lower influence, but no box: served last
    (region,) = res[0]["result"]
    assert region["type"] == "rectanglelabels" and region["value"]["rectanglelabels"] == ["dot"]
    assert region["original_width"] == 96 and res[1]["result"] == []


def test_predict_defers_new_tasks_once_its_time_budget_is_spent(tmp_path, file_server):
    """Label Studio gives /predict 100 s: stored scores always answer; new tasks are scored while the
    budget lasts (PREDICT_BUDGET_S), the rest get the neutral score and say they wait for the next job."""
    www, url = file_server
    Image.new("RGB", (40, 30), (200, 10, 10)).save(www / "new.jpg")
    publish_version(tmp_path / "models")
    tasks = [{"id": 2, "data": {"image": "/data/upload/7/known.jpg"}}, {"id": 51, "data": {"image": f"{url}/new.jpg"}}]
    host = url.split("//")[1]
    spent = make_app(tmp_path, label_studio_url="http://127.0.0.1:9", label_studio_api_key="0" * 40,
                     download_allowed_hosts=host, predict_budget_s=0).test_client()
    res = spent.post("/predict", json={"project": PROJECT, "tasks": tasks}).json["results"]
    assert res[0]["result"] and "deferred" not in res[0]  # the job's stored score
    assert res[1]["score"] == 0.5 and "PREDICT_BUDGET_S=0 s" in res[1]["deferred"] and res[1]["result"] == []
    roomy = make_app(tmp_path, label_studio_url="http://127.0.0.1:9", label_studio_api_key="0" * 40,
                     download_allowed_hosts=host).test_client()
    res = roomy.post("/predict", json={"project": PROJECT, "tasks": tasks}).json["results"]
    assert "deferred" not in res[1] and res[1]["result"]


def test_the_connection_setup_sent_reaches_the_job_worker_and_only_its_user(tmp_path):
    """Without LABEL_STUDIO_URL / _API_KEY, the hostname and token of /setup are saved (mode 0600) for the
    job worker, a process that never sees /setup; they appear in no answer."""
    import stat

    app = make_app(tmp_path, engine={"cold_start": "off"})  # (no job: ls.example does not exist)
    c = app.test_client()
    r = c.post("/setup", json={"project": PROJECT, "schema": CONFIG, "hostname": "http://ls.example:8080",
                               "access_token": "secret-token-123"})
    assert r.status_code == 200
    saved = tmp_path / "models" / "7" / "connection.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert "secret-token-123" not in c.get("/status").get_data(as_text=True)
    worker = make_app(tmp_path, job_runner="web").extensions["isal"]  # a fresh process's view
    api = worker.api_for(7)
    assert api.ls._client_wrapper.get_base_url().startswith("http://ls.example:8080")


@pytest.fixture
def canary():
    """A loopback HTTP server that answers 404 and records each request's Authorization header."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_the_configured_key_never_goes_to_a_host_setup_names(tmp_path, canary):
    """LABEL_STUDIO_API_KEY set, LABEL_STUDIO_URL not: a /setup hostname is reached only with the token that came
    with it; without one the job fails saying why, and the key reaches no host. LABEL_STUDIO_HOSTS limits the
    hosts a /setup may name."""
    url, seen = canary
    app = make_app(tmp_path, label_studio_api_key="SECRET-KEY-of-the-backend")
    c, backend = app.test_client(), app.extensions["isal"]
    assert c.post("/setup", json={"project": PROJECT, "schema": CONFIG, "hostname": url}).status_code == 200
    with pytest.raises(JobError, match="goes only to LABEL_STUDIO_URL"):
        backend.api_for(7)
    assert c.post("/train", json={"project": PROJECT}).status_code in (200, 201, 202)
    assert backend.jobs.wait_idle(7, 30)
    assert "LABEL_STUDIO_URL" in c.get("/status?project=7").json["last_error"]
    c.post("/setup", json={"project": PROJECT, "schema": CONFIG, "hostname": url, "access_token": "their-token"})
    with pytest.raises(Exception):
        backend.api_for(7).project_label_config(7)  # the canary answers 404: what matters is what it was sent
    assert seen and all("SECRET-KEY" not in h for h in seen) and any("their-token" in h for h in seen)
    limited = make_app(tmp_path / "limited", label_studio_hosts="ls.example:8080, https://other.example",
                       engine={"cold_start": "off"})  # (no job: ls.example does not exist)
    r = limited.test_client().post("/setup", json={"project": PROJECT, "schema": CONFIG, "hostname": url,
                                                   "access_token": "t"})
    assert r.status_code == 403 and "LABEL_STUDIO_HOSTS" in r.json["error"]
    ok = limited.test_client().post("/setup", json={"project": PROJECT, "schema": CONFIG,
                                                    "hostname": "http://ls.example:8080", "access_token": "t"})
    assert ok.status_code == 200


def test_a_label_studio_that_does_not_answer_fails_the_job_with_a_message_not_an_exception_text(tmp_path):
    """A refused connection and a server that accepts and never answers (within LABEL_STUDIO_TIMEOUT): the
    job fails with a sentence naming the request, and the backend keeps serving."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never answers
    try:
        for url, says in ((f"http://127.0.0.1:{silent.getsockname()[1]}", "did not answer to GET"),
                          ("http://127.0.0.1:9", "cannot reach Label Studio to GET")):
            app = make_app(tmp_path / says[:6], label_studio_url=url, label_studio_api_key="0" * 40,
                           label_studio_timeout=1, engine={"cold_start": "off"})
            c = app.test_client()
            assert c.post("/setup", json={"project": PROJECT, "schema": CONFIG}).status_code == 200
            assert c.post("/train", json={"project": PROJECT}).status_code == 202
            status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, 7, timeout=60)
            error = status["last_error"] or ""
            assert says in error and "/api/projects/7" in error and "next job starts afresh" in error, error
            assert c.get("/health").status_code == 200
    finally:
        silent.close()
