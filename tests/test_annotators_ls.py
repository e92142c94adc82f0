"""Several annotators at once, on Label Studio on PostgreSQL, with the backend as users run it (gunicorn, worker).

4 Label Studio users (signed up through its form, each with their own token) each loop /next ->
annotate 50 times while the backend retrains every 40 annotations (webhooks): every annotation is in
Label Studio once, no served task was already labeled, the served tasks come from the backend's
versions, and the jobs ran and were coalesced. The long form with figures: `python -m bench.annotators`.
"""
from __future__ import annotations

import pytest

from backend.labelstudio.client import LabelStudioAPI
from backend.tools.demo import make_cifar_project
from backend.tools.servers import BackendProcess
from bench.annotators import session
from bench.load import wait_idle

try:
    from needs import need
except ImportError:  # tests/ imported as a package
    from tests.needs import need

pytestmark = pytest.mark.integration


def test_four_annotators_label_fifty_each_while_jobs_retrain_and_nothing_is_lost_or_served_twice(label_studio_pg,
                                                                                                 tmp_path):
    need("cifar10")
    server = label_studio_pg
    api = LabelStudioAPI(server.url, server.legacy_token, timeout=120)
    project = make_cifar_project(api, server.files_root, 240, reference_fraction=0.05, title="four annotators")
    env = {"LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.legacy_token,
           "MODEL_DIR": str(tmp_path / "models"), "ISAL_RETRAIN_EVERY": "40", "ISAL_SEED": "0", "LOG_LEVEL": "INFO"}
    with BackendProcess(env, log_path=tmp_path / "backend.log") as backend:
        api.connect_ml_backend(project.id, backend.url)
        wait_idle(backend.url, project.id, 1)
        result = session(server.url, server.legacy_token, backend.url, project.id, project.labels,
                         project.reference, annotators=4, each=50, think_s=0.0)
        log = backend.log_tail(20000)
    assert result["submitted"] == 200 and not result["errors"], result
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["served_already_labeled"] == 0, result
    stored = {t["id"]: len(t["annotations"]) for t in api.tasks_with_annotations(project.id)}
    assert sum(stored.values()) == 200 + len(project.reference)  # the annotators' and the reference's, once each
    assert result["served_with_a_version_prediction"] >= 0.9, result  # served from the backend's order
    assert result["jobs_run"] >= 2 and result["most_jobs_waiting"] <= 1, result
    assert "Traceback" not in log, log[-3000:]
    ours = [v for v in api.model_versions(project.id) if v.startswith(f"isal-{project.id}-")]
    assert len(ours) <= 2, ours  # KEEP_LS_VERSIONS: older versions' predictions were deleted meanwhile
