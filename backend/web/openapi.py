"""The backend's routes as an OpenAPI 3.1 description, served at GET /openapi.json.

For users (what to send, what comes back) and for fuzzers (tests/test_fuzz.py walks the same
routes); tests/test_openapi.py keeps it true to the Flask app's routes.
"""
from __future__ import annotations

PROJECT = {"description": "Label Studio project id, or its '<id>.<timestamp>' form", "oneOf": [
    {"type": "integer"}, {"type": "string"}]}
ERROR = {"description": "bad request, unknown project, or refused credentials",
         "content": {"application/json": {"schema": {"type": "object", "required": ["error"],
                                                     "properties": {"error": {"type": "string"}}}}}}
OBJECT = {"content": {"application/json": {"schema": {"type": "object"}}}}


def _op(summary: str, body: dict | None = None, ok: str = "200", query: list[dict] | None = None) -> dict:
    op = {"summary": summary, "responses": {ok: {"description": "OK", **OBJECT}, "4XX": ERROR}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if query:
        op["parameters"] = query
    return op


PROJECT_QUERY = [{"name": "project", "in": "query", "required": False, "schema": {"type": "string"}}]

SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "ISAL Label Studio ML backend", "version": "1",
             "description": "Influence-based active learning (ISAL) as a Label Studio ML backend "
                            "(label-studio-ml 2.x protocol)."},
    "paths": {
        "/health": {"get": _op("Liveness (no credentials needed)")},
        "/": {"get": _op("Model dir and project count")},
        "/setup": {"post": _op("Connect a project: its labeling config (schema) is checked and saved", {
            "type": "object", "required": ["project", "schema"],
            "properties": {"project": PROJECT, "schema": {"type": "string"}, "hostname": {"type": "string"},
                           "access_token": {"type": "string"}, "model_version": {"type": "string"}}})},
        "/predict": {"post": _op("A prediction per task, from the current model version", {
            "type": "object", "required": ["tasks"],
            "properties": {"project": PROJECT, "tasks": {"type": "array", "items": {
                "type": "object", "required": ["id"], "properties": {"id": {"type": "integer"},
                                                                     "data": {"type": "object"}}}},
                "label_config": {"type": "string"}, "params": {"type": "object"}}})},
        "/webhook": {"post": _op("Label Studio webhook: annotation events count toward a retrain; "
                                 "START_TRAINING asks for one", {
                                     "type": "object", "required": ["action"],
                                     "properties": {"action": {"type": "string"}, "project": {"type": "object"}}},
                                 ok="202")},
        "/train": {"post": _op("Label Studio's 'Start training' button", {
            "type": "object", "required": ["project"], "properties": {"project": PROJECT}}, ok="202")},
        "/versions": {"get": _op("Model versions, newest first", query=PROJECT_QUERY)},
        "/status": {"get": _op("Version, job state, counts, warnings (one project or all)", query=PROJECT_QUERY)},
        "/review": {"get": _op("The labeled tasks, most likely wrong annotation first", query=[
            {"name": "project", "in": "query", "required": True, "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}}])},
        "/hygiene": {"get": _op("Near-duplicate groups, leaks into the reference set, outliers (current version)",
                                query=[{"name": "project", "in": "query", "required": True,
                                        "schema": {"type": "string"}}])},
        "/projects/{project_id}": {"get": {
            "summary": "The project page (HTML): version, job and progress, learning curve and forecast, labels",
            "parameters": [{"name": "project_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}},
                          "4XX": {"description": "unknown project", "content": {"text/html": {
                              "schema": {"type": "string"}}}}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text format): jobs, phases, predictions, tasks "
                                        "scored, download failures, requests",
                             "responses": {"200": {"description": "OK", "content": {"text/plain": {
                                 "schema": {"type": "string"}}}}, "4XX": {"description": "never: no input"}}}},
        "/openapi.json": {"get": _op("This description")},
    },
}
