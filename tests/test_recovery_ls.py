"""A learner that diverges does not fail the job, against a real Label Studio: the job recovers at a lower
learning rate, publishes, and says so in its report and /status."""
from __future__ import annotations

import pytest

try:
    from backend_helpers import annotated_project, wait_for_job
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import annotated_project, wait_for_job
    from tests.test_backend_app import make_app

pytestmark = pytest.mark.integration


def test_a_diverging_learner_recovers_publishes_and_warns(label_studio, tmp_path):
    pid, _, _ = annotated_project(label_studio, 16, 8, 31, "diverging")
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"lr": 1e5, "retrain_every": 0, "cold_start": "off"})  # weight decay x lr: blows up
    c = app.test_client()
    c.post("/setup", json={"project": f"{pid}.0", "schema": label_studio.client().projects.get(id=pid).label_config})
    assert c.post("/train", json={"project": f"{pid}.0"}).status_code == 202
    status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, timeout=300)
    assert status["last_error"] is None and status["model_version"] != "untrained", status
    recovered = status["warnings"]["training_recovered"]
    assert recovered["count"] >= 1 and "diverged at lr 100000" in recovered["examples"][0], recovered
    assert "training_recovered" in status["job"]["last_job"]["warnings"]  # the job's report says it too
