"""Generated requests against every route of the OpenAPI description (hypothesis): wrong types, deep nesting,
unicode, missing fields, raw bytes, and shapes of what Label Studio really sends. No answer is a 5xx and every
error body is JSON with a message. Jobs are stubbed (nothing trains); a project is set up so the
project routes run their real code."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from test_backend_app import CONFIG, PROJECT, make_app, publish_version
except ImportError:  # tests/ imported as a package
    from tests.test_backend_app import CONFIG, PROJECT, make_app, publish_version

ROUTES = [("GET", "/health"), ("GET", "/"), ("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"),
          ("POST", "/train"), ("GET", "/versions"), ("GET", "/status"), ("GET", "/metrics"), ("GET", "/openapi.json"),
          ("GET", "/review"), ("GET", "/hygiene"), ("GET", "/projects/{project_id}")]

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=40)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=12), inner, max_size=4), max_leaves=30)
project_refs = st.sampled_from([PROJECT, "7", 7, "7.0.1", "-1", "abc", "", None, 10**30, "７", [7], {"id": 7}])
task = st.fixed_dictionaries({"id": st.one_of(st.integers(-5, 10), st.text(max_size=5), st.none())},
                             optional={"data": st.dictionaries(st.sampled_from(["image", "isal_reference", "x"]),
                                                               json_values, max_size=3)})
label_studio_like = st.fixed_dictionaries({}, optional={
    "project": project_refs, "tasks": st.lists(task, max_size=5) | json_values,
    "action": st.sampled_from(["START_TRAINING", "ANNOTATION_CREATED", "ANNOTATIONS_DELETED", "", "☃"]) | json_values,
    "schema": st.sampled_from([CONFIG, "<View>", "", "<View><Image name='i' value='$i'/></View>"]) | json_values,
    "hostname": json_values, "access_token": json_values, "params": json_values,
})
bodies = (label_studio_like.map(json.dumps) | json_values.map(json.dumps) | st.binary(max_size=200)
          | st.just("[" * 5000 + "]" * 5000) | st.just('{"a":' * 3000 + "1" + "}" * 3000))
path_ids = st.sampled_from(["7", "0", "-1", "abc", "7.0", "99999999999999999999", "９", "%00", "a/b"]) \
    | st.text(max_size=8).filter(lambda t: not set(t) & set("?#"))
queries = st.dictionaries(st.sampled_from(["project", "x"]), st.text(max_size=20), max_size=2)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    publish_version(tmp / "models")
    c = make_app(tmp, run_job=lambda project_id, set_phase: {}).test_client()
    assert c.post("/setup", json={"project": PROJECT, "schema": CONFIG}).status_code == 200
    return c


@pytest.mark.parametrize("method, path", ROUTES)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(body=bodies, query=queries, content_type=st.sampled_from(["application/json", "text/plain", None]),
       project_id=path_ids)
def test_no_generated_request_gets_a_server_error(client, method, path, body, query, content_type, project_id):
    headers = {"Content-Type": content_type} if content_type else {}
    path = path.replace("{project_id}", project_id)
    r = client.open(path, method=method, data=body, query_string=query, headers=headers)
    assert r.status_code < 500, (r.status_code, r.get_data(as_text=True)[:300])
    if r.status_code >= 400 and r.mimetype == "text/html":  # the project page, for people: its errors are HTML
        assert path.startswith("/projects/") and "<h1>" in r.get_data(as_text=True), r.get_data(as_text=True)[:300]
    elif r.status_code >= 400:
        assert isinstance(r.json, dict) and r.json.get("error"), r.get_data(as_text=True)[:300]


def test_the_fuzzed_routes_are_every_described_route(client):
    spec = client.get("/openapi.json").json
    assert {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops} == set(ROUTES)


def test_a_huge_body_is_refused_or_handled_without_a_server_error(client):
    huge = json.dumps({"project": PROJECT, "tasks": [{"id": i, "data": {"image": "x" * 100}} for i in range(20000)]})
    r = client.post("/predict", data=huge, headers={"Content-Type": "application/json"})
    assert r.status_code < 500
