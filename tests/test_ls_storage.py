"""Label Studio's storage stays bounded and whole: the predictions of old versions go, a partial write never stays.

Against a real Label Studio: after each job only the predictions of the newest KEEP_LS_VERSIONS
versions of this backend remain (the one Label Studio serves by always), another backend's are
left alone, and /next serves the current version's top task; a version whose predictions Label
Studio keeps only in part is not published, and what it wrote is deleted.
"""
from __future__ import annotations

import pytest
import requests
import torch

from backend.errors import JobError
from backend.job.publication import Publication
from backend.labelstudio.client import LabelStudioAPI
from backend.storage.projects import ModelDir
from backend.tasktypes import parse_label_config
from isal_core.influence.params import select_parameters
from isal_core.influence.scorer import InfluenceScorer
from isal_core.nets.models import build_model

try:
    from backend_helpers import choice_result, frozen_project, wait_for_job
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import choice_result, frozen_project, wait_for_job
    from tests.test_backend_app import make_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def label_studio(label_studio_pg):
    """Label Studio on PostgreSQL, as production runs it: pruning and partial writes are its database's work."""
    return label_studio_pg


def test_label_studio_keeps_the_predictions_of_the_newest_two_versions(label_studio, tmp_path):
    pid, by_task, train, weights = frozen_project(label_studio, tmp_path, 20, 6, 11, "bounded storage")
    api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)
    other = train[-1]  # a prediction of another backend, which the pruning must leave alone
    api.write_predictions(pid, [{"task": other, "result": [], "score": 0.3, "model_version": "another-backend-1"}])
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   keep_ls_versions=2,
                   engine={"retrain_every": 0, "damping": 0.1, "cold_start": "off"})
    c = app.test_client()
    config = label_studio.client().projects.get(id=pid).label_config
    assert c.post("/setup", json={"project": f"{pid}.0", "schema": config}).status_code == 200
    versions = []
    for n in range(1, 6):
        assert c.post("/train", json={"project": f"{pid}.0"}).status_code == 202
        status = wait_for_job(lambda p: c.get(f"/status?project={p}").json, pid, jobs_started=n, timeout=300)
        assert status["last_error"] is None, status
        versions.append(status["model_version"])
        counts = api.model_versions(pid)
        assert counts == {**{v: counts[v] for v in versions[-2:]}, "another-backend-1": 1}, counts
        assert counts[versions[-1]] == status["counts"]["unlabeled"] + status["counts"]["reviewed"]
        assert api.project_model_version(pid) == versions[-1]
        pruned = status["job"]["last_job"]["label_studio_versions_pruned"]
        assert list(pruned) == ([versions[-3]] if n >= 3 else []), pruned
        served = api.next_task(pid)
        assert served["id"] == status["top_task"]  # the queue is the current version's
        label = by_task[served["id"]].label
        label_studio.client().annotations.create(id=served["id"], result=choice_result(label))


def test_a_version_label_studio_keeps_only_in_part_is_not_published_and_its_writes_are_deleted(label_studio,
                                                                                                tmp_path):
    pid, by_task, train, _ = frozen_project(label_studio, tmp_path, 8, 0, 12, "partial write")
    api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)
    config = label_studio.client().projects.get(id=pid).label_config
    task_type = parse_label_config(config)
    project = ModelDir(tmp_path / "models").get(pid)
    project.register(config, task_type)
    model = build_model("small_cnn", len(task_type.classes))
    names = [n for n, _ in select_parameters(model, "weights")]
    scorer = InfluenceScorer(torch.zeros(sum(p.numel() for _, p in select_parameters(model, "weights"))), names)
    version = f"isal-{pid}-1-partial"
    good = list(task_type.predictions(version, train, [0] * len(train), [0.5] * len(train)))
    bad = {**good[-1], "result": choice_result("not-a-class")}  # Label Studio drops what does not fit the config
    with pytest.raises(JobError, match=f"kept {len(train) - 1} of the {len(train)} predictions"):
        with Publication(project, api, version) as publication:
            publication.save(model, {"arch": "small_cnn", "num_classes": len(task_type.classes)}, scorer, train,
                             [0.0] * len(train), [0] * len(train), scores=[0.5] * len(train))
            publication.write_predictions(good[:-1] + [bad], len(train))
    assert version not in api.model_versions(pid)  # what was written is gone
    assert project.current is None and project.versions(good_only=False) == []
    assert not list(project.root.glob(".tmp-*"))


def test_postgresql_down_mid_job_fails_the_job_clearly_and_the_next_job_sets_label_studio_right(label_studio,
                                                                                               postgres, tmp_path):
    """The job is held after Label Studio took its predictions (tests/fault_injection), PostgreSQL stops, the job
    goes on: its version is whole on disk (published there before Label Studio is told), Label Studio cannot be
    pointed at it, and the job fails with a message naming Label Studio's answer while the web keeps answering.
    PostgreSQL back, the next job points Label Studio at that version first, then publishes its own; Label
    Studio holds exactly the two versions' predictions and nothing is left in staging."""
    from backend.tools.servers import BackendProcess
    try:
        from test_crash_safety import HOLD_ENV, labeled_project, status_of, version_dirs, wait_for_file
    except ImportError:  # tests/ imported as a package
        from tests.test_crash_safety import HOLD_ENV, labeled_project, status_of, version_dirs, wait_for_file

    ls, api, pid, by_task, train = labeled_project(label_studio, 30, 5, "postgresql outage")
    model_dir, marker, release = tmp_path / "models", tmp_path / "held", tmp_path / "release"
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token(),
           "MODEL_DIR": str(model_dir), "ISAL_RETRAIN_EVERY": "0", "ISAL_SEED": "0", "ISAL_COLD_START": "off",
           "LOG_LEVEL": "INFO", "TEST_HOLD_AT": "predictions", "TEST_HOLD_FILE": str(marker),
           "TEST_HOLD_RELEASE": str(release), **HOLD_ENV}
    with BackendProcess(env, log_path=tmp_path / "backend.log") as backend:
        setup = {"project": str(pid), "schema": ls.projects.get(id=pid).label_config}
        requests.post(f"{backend.url}/setup", json=setup, timeout=30).raise_for_status()
        requests.post(f"{backend.url}/train", json={"project": str(pid)}, timeout=30).raise_for_status()
        wait_for_file(marker, backend)
        (held,) = [t.removeprefix(".tmp-") for t in version_dirs(model_dir, pid)[1]]
        assert api.model_versions(pid) == {held: len(train)}
        postgres.halt()
        try:
            release.write_text("")
            failed = wait_for_job(lambda p: status_of(backend, p), pid, jobs_started=1)
            assert requests.get(f"{backend.url}/health", timeout=10).status_code == 200
        finally:
            postgres.start()
        error = failed["last_error"] or ""
        assert error.startswith("Label Studio failed (HTTP 500: an HTML page") and "<" not in error, error
        assert failed["model_version"] == held and version_dirs(model_dir, pid) == ([held], []), failed
        assert api.project_model_version(pid) != held  # Label Studio was never told
        requests.post(f"{backend.url}/train", json={"project": str(pid)}, timeout=30).raise_for_status()
        status = wait_for_job(lambda p: status_of(backend, p), pid, jobs_started=2)
        log = backend.log_tail(30000)
    assert status["last_error"] is None, status
    new = status["model_version"]
    assert status["job"]["last_job"]["reconciled"] == {"model_version_set": held}, status["job"]["last_job"]
    assert api.model_versions(pid) == {held: len(train), new: len(train)}, log[-3000:]
    assert api.project_model_version(pid) == new
    assert version_dirs(model_dir, pid) == (sorted([held, new]), [])


def test_annotations_submitted_while_old_predictions_are_deleted_are_stored_meanwhile(label_studio):
    """The backend deletes an old version's predictions one request each (Label Studio's own deletion of a
    version holds every task it touches until it ends): annotations submitted meanwhile are stored, one after
    another while the deletion still runs."""
    import threading

    from backend.tools.demo import label_config

    ls = label_studio.client()
    api = LabelStudioAPI(label_studio.url, label_studio.legacy_token)
    pid = ls.projects.create(title="deleting while annotating", label_config=label_config()).id
    ls.projects.import_tasks(id=pid, request=[{"image": f"http://127.0.0.1:9/{i}.jpg"} for i in range(300)])
    ids = [t["id"] for t in api.iter_tasks(pid, fields="task_only", include="id")]
    old = f"isal-{pid}-1-old"
    api.write_predictions(pid, [{"task": t, "result": [], "score": 0.5, "model_version": old} for t in ids])
    deleted = []
    deleting = threading.Thread(target=lambda: deleted.append(api.delete_version_predictions(pid, old)))
    deleting.start()
    annotated, during = [], []
    for t in ids:
        ls.annotations.create(id=t, result=choice_result("cat"))
        annotated.append(t)
        during.append(deleting.is_alive())
        if not deleting.is_alive():
            break
    deleting.join()
    assert deleted == [len(ids)] and old not in api.model_versions(pid)
    # Label Studio's one-transaction deletion would hold the first annotation to its end: one at most "during"
    assert sum(during) >= 2, f"{sum(during)} annotations were stored while the deletion ran"
    stored = {t["id"]: len(t["annotations"]) for t in api.tasks_with_annotations(pid)}
    assert all(stored[t] == 1 for t in annotated) and sum(stored.values()) == len(annotated)
