"""See what the model is doing: the project page, /metrics in the Prometheus format, progress in /status."""
from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.scheduling.manager import JobManager

try:
    from backend_helpers import frozen_project, wait_for_job
    from test_backend_app import CONFIG, PROJECT, make_app, publish_version
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import frozen_project, wait_for_job
    from tests.test_backend_app import CONFIG, PROJECT, make_app, publish_version


def samples(client) -> dict[tuple, float]:
    """{(sample name, labels...): value} of /metrics, parsed by prometheus-client's own parser."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def test_bad_input_gets_a_clear_page_never_a_500(tmp_path):
    app = make_app(tmp_path)
    c = app.test_client()
    r = c.get("/projects/999")
    assert r.status_code == 404 and "not connected to this ML backend" in r.get_data(as_text=True)
    assert c.get("/projects/abc").status_code == 404
    assert c.post("/setup", json={"project": PROJECT, "schema": CONFIG}).status_code == 200
    page = c.get("/projects/7").get_data(as_text=True)  # connected, no version yet
    assert "untrained" in page and "No version with a metric on R yet" in page
    publish_version(tmp_path / "models")  # a version whose meta has no metric (as old versions had none)
    r = c.get("/projects/7")
    assert r.status_code == 200 and "none (a cold start, or not measured)" in r.get_data(as_text=True)


def test_progress_of_a_long_phase_is_in_status(tmp_path):
    inside, release = threading.Event(), threading.Event()

    def job(project_id, set_phase):
        set_phase("training")
        set_phase("training steps", 30, 120)
        inside.set()
        release.wait(30)
        return {}

    jobs = JobManager(job, retrain_every=0, table_path=tmp_path / "jobs.sqlite")
    jobs.request(3, "test")
    assert inside.wait(30)
    snap = jobs.snapshot(3)
    assert snap["phase"] == "training" and snap["progress"] == {"of": "training steps", "done": 30, "total": 120}
    release.set()
    assert jobs.wait_idle(3, 30) and jobs.snapshot(3)["progress"] is None


@pytest.mark.integration
def test_metrics_rise_by_exactly_the_work_of_a_job_and_the_page_draws_the_curve(label_studio, tmp_path):
    pid, _, _, weights = frozen_project(label_studio, tmp_path, 16, 6, 8, "project page")
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"retrain_every": 0, "cold_start": "off"})
    c = app.test_client()
    c.post("/setup", json={"project": f"{pid}.0", "schema": label_studio.client().projects.get(id=pid).label_config})
    before = samples(c)
    answer = c.post("/train", json={"project": f"{pid}.0"}).json
    assert answer["page_url"].endswith(f"/projects/{pid}") and answer["page_url"] in answer["message"]
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, timeout=300)
    assert status["last_error"] is None, status
    after = samples(c)
    rise = lambda *key: after.get(key, 0) - before.get(key, 0)  # noqa: E731
    report = status["job"]["last_job"]
    assert rise("isal_jobs_total", ("outcome", "done")) == 1
    assert rise("isal_predictions_written_total") == report["predictions_written"] == 10 + 6  # pool + reviewed
    assert rise("isal_tasks_scored_total", ("by", "job")) == 10
    assert rise("isal_requests_total", ("route", "/train"), ("status", "202")) == 1
    assert rise("isal_job_seconds_count") == 1 and after[("isal_jobs_now", ("state", "idle"))] == 1
    page = c.get(f"/projects/{pid}").get_data(as_text=True)
    assert 'id="learning-curve"' in page and "not enough versions yet" in page and status["model_version"] in page
    assert "annotations most likely wrong" in page and "Last jobs" in page
