"""Two Label Studio servers on one backend, each with a project of the same id: separate projects, versions
and connections (backend.storage.servers), against two real servers (one on SQLite, one on PostgreSQL)."""
from __future__ import annotations

import json

import pytest

from backend.errors import UnknownProject
from backend.labelstudio.client import LabelStudioAPI
from backend.storage.layout import PROJECT
from backend.storage.servers import STRIDE, Servers, label_studio_reference

try:
    from backend_helpers import annotated_project, wait_for_job
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import annotated_project, wait_for_job
    from tests.test_backend_app import make_app



def test_a_project_reference_gives_the_id_and_the_creation_second():
    assert label_studio_reference("12.1700000000") == (12, 1700000000)
    assert label_studio_reference({"id": 12, "created_at": "2023-11-14T22:13:20.5Z"}) == (12, 1700000000)
    assert label_studio_reference(12) == label_studio_reference("12") == (12, None)
    assert label_studio_reference({"id": 12}) == (12, None)
    for bad in ("twelve", 0, True, STRIDE, None):
        with pytest.raises(ValueError):
            label_studio_reference(bad)


def test_servers_are_numbered_in_the_order_they_connect_and_a_request_finds_its_project(tmp_path):
    servers = Servers(tmp_path)
    assert servers.number(None) == 0
    assert [servers.number(u) for u in ("http://A:8080", "http://b:8080/", "http://a:8080", "b:8080")] == [0, 1, 0, 1]
    assert Servers(tmp_path).number("http://c") == 2  # kept in servers.json
    assert servers.resolve("5.100") == 5  # nothing registered: the plain id (UnknownProject comes later)
    for key, created in ((5, 100), (STRIDE + 5, 200)):
        (tmp_path / str(key)).mkdir()
        (tmp_path / str(key) / PROJECT).write_text(json.dumps({"label_studio_created": created}))
    assert servers.resolve("5.200") == STRIDE + 5
    assert servers.resolve({"id": 5, "created_at": "1970-01-01T00:01:40+00:00"}) == 5
    with pytest.raises(UnknownProject, match="2 Label Studio servers have a project 5"):
        servers.resolve("5")
    assert servers.resolve(6) == 6


def next_ids_aligned(a, b) -> None:
    """Create throwaway projects until both servers give the same id to the next project."""
    ca, cb = a.client(), b.client()
    ia, ib = ca.projects.create(title="aligning ids").id, cb.projects.create(title="aligning ids").id
    while ia != ib:
        if ia < ib:
            ia = ca.projects.create(title="aligning ids").id
        else:
            ib = cb.projects.create(title="aligning ids").id


@pytest.mark.integration
def test_two_label_studio_servers_with_a_project_1_each_get_separate_projects_and_versions(label_studio,
                                                                                          label_studio_pg, tmp_path):
    servers = (label_studio, label_studio_pg)
    next_ids_aligned(*servers)
    made = [annotated_project(s, 12, 4, seed, f"server {seed}") for seed, s in enumerate(servers)]
    pid = made[0][0]
    assert made[1][0] == pid
    refs = [f"{pid}.{int(s.client().projects.get(id=pid).created_at.timestamp())}" for s in servers]
    app = make_app(tmp_path, label_studio_hosts="127.0.0.1", engine={"retrain_every": 0, "cold_start": "off"})
    c = app.test_client()
    for s, ref in zip(servers, refs):
        setup = {"project": ref, "schema": s.client().projects.get(id=pid).label_config, "hostname": s.url,
                 "access_token": s.legacy_token}
        assert c.post("/setup", json=setup).status_code == 200
    keys = [pid, STRIDE + pid]  # the first server keeps the plain id
    statuses = []
    for key, ref in zip(keys, refs):
        assert c.post("/train", json={"project": ref}).status_code == 202
        statuses.append(wait_for_job(lambda p: c.get(f"/status?project={p}").json, key, timeout=300))
    versions = [st["model_version"] for st in statuses]
    assert all(st["last_error"] is None for st in statuses), statuses
    assert versions[0].startswith(f"isal-{pid}-") and versions[1].startswith(f"isal-{STRIDE + pid}-"), versions
    for s, version, (_, by_task, train) in zip(servers, versions, made):
        api = LabelStudioAPI(s.url, s.legacy_token)
        assert api.model_versions(pid) == {version: len(train)}  # each server holds its own version's, all of them
        assert api.project_model_version(pid) == version
    assert (tmp_path / "models" / str(pid)).is_dir() and (tmp_path / "models" / str(STRIDE + pid)).is_dir()
    # /predict names the server by the project's creation second; without it, the id alone is ambiguous
    task = {"id": made[1][2][-1], "data": {"image": "x"}}
    for ref, version in zip(refs, versions):
        answer = c.post("/predict", json={"project": ref, "tasks": [task]})
        assert answer.status_code == 200 and answer.json["model_version"] == version, answer.json
    ambiguous = c.post("/predict", json={"project": str(pid), "tasks": [task]})
    assert ambiguous.status_code == 404 and "2 Label Studio servers have a project" in ambiguous.json["error"]
    created = label_studio_pg.client().projects.get(id=pid).created_at.isoformat()
    webhook = {"action": "START_TRAINING", "project": {"id": pid, "created_at": created}}
    assert c.post("/webhook", json=webhook).json["project"] == STRIDE + pid
