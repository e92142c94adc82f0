"""The backend's only contact with the Label Studio API.

A thin layer over label-studio-sdk, so that token handling (legacy `Token` keys and personal access
tokens, JWT refresh tokens exchanged for short-lived access tokens), pagination and retries stay the
SDK's business. Raw HTTP only where the SDK has no call (`/next`, the export, deleting predictions) and
for task media: the SDK's media helper (`label_studio_tools...get_local_path`) sends a personal access
token unexchanged (401), has no timeout and writes non-atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from ..errors import DownloadError
from .download_policy import DownloadPolicy, fetch_file

__all__ = ["ApiError", "LabelStudioAPI"]

log = logging.getLogger(__name__)

_CLOUD_SCHEMES = ("s3:", "gs:", "azure-blob:")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}$")


class LabelStudioAPI:
    """One Label Studio server as seen with one API key (legacy token or personal access token)."""

    def __init__(self, url: str, api_key: str, timeout: float = 30, policy: DownloadPolicy | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.policy = policy or DownloadPolicy(self.url)  # default: files from Label Studio's origin only
        # Our own httpx client (thread-safe, pooled) serves both the SDK and downloads.
        self._http = httpx.Client(timeout=timeout, follow_redirects=True)
        # The trailing slash keeps a path prefix (https://host/ls/) in the SDK's
        # token-refresh URL, which it builds with urljoin.
        self.ls = LabelStudio(base_url=self.url + "/", api_key=api_key, timeout=timeout, httpx_client=self._http)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "LabelStudioAPI":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading -------------------------------------------------------------
    def iter_tasks(self, project_id: int, fields: str = "all", page_size: int = 1000,
                   include: str | None = None) -> Iterator[dict]:
        """Every task of a project as a JSON-ready dict (`id`, `data`, `annotations`, `predictions`, ...).

        One page at a time, so memory stays flat. `fields="all"` brings annotations (with `result`,
        `was_cancelled`) and predictions; `include="id,data,..."` only those fields, so the server
        skips the others' aggregates. Tasks come in id order. Data URIs of cloud storages are
        resolved by the server into `/tasks/<id>/presign/...` URLs that `download` can fetch.
        Caveat: with "retrieve predictions automatically" on, Label Studio asks the connected ML
        backend for tasks without predictions while listing them (this call can call /predict).
        """
        for task in self.ls.tasks.list(project=project_id, fields=fields, page_size=page_size, include=include):
            yield task.model_dump(mode="json")

    def tasks_with_annotations(self, project_id: int, page_size: int = 1000) -> Iterator[dict]:
        """Every task (`id`, `data` resolved as in iter_tasks, ...) with its `annotations`, faster than
        `iter_tasks(fields="all")`: a task-only listing of just the fields read here skips Label Studio's
        per-task joins and aggregates, and one export brings the annotated tasks' annotations (5,000
        tasks, 350 annotated, a prediction on each: 3.3 s + 0.9 s, against 14.3 s for the task-only
        listing of every field and 22.7 s for fields="all"). A task that counts annotations but is not
        in the export is fetched alone."""
        exported = self.request("GET", f"api/projects/{int(project_id)}/export", params={"exportType": "JSON"}).json()
        annotated = {t["id"]: t.get("annotations") or [] for t in exported}
        for task in self.iter_tasks(project_id, fields="task_only", page_size=page_size,
                                    include="id,data,total_annotations,cancelled_annotations"):
            annotations = annotated.get(task["id"])
            if annotations is None and (task.get("total_annotations") or task.get("cancelled_annotations")):
                annotations = self.request("GET", f"api/tasks/{int(task['id'])}").json().get("annotations")
            task["annotations"] = annotations or []
            yield task

    def project_label_config(self, project_id: int) -> str:
        """The project's labeling config XML (parse it with label_studio_sdk.label_interface.LabelInterface)."""
        return self.ls.projects.get(id=project_id).label_config

    def next_task(self, project_id: int) -> dict | None:
        """The task Label Studio gives the calling user next, or None when none is left (HTTP 404).

        It locks the task to the caller (the API key's user): a second call returns the same task until
        it is annotated or skipped. With "Uncertainty sampling" and `project.model_version` set, it is the
        unlabeled task whose prediction of that version has the lowest score (random among the lowest
        few when the project has more than one annotator).
        """
        response = self.request("GET", f"api/projects/{int(project_id)}/next", ok=(200, 404))
        return None if response.status_code == 404 else response.json()

    def request(self, method: str, path: str, ok=(200, 201), **kwargs) -> httpx.Response:
        """A call the SDK has no method for, with the SDK's auth; ApiError unless the status is in `ok`."""
        response = self.ls._client_wrapper.httpx_client.request(path, method=method, **kwargs)
        if response.status_code not in ok:
            raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=_body(response))
        return response

    # -- writing -------------------------------------------------------------
    def write_predictions(self, project_id: int, predictions: Iterable[dict], chunk_size: int = 50_000,
                          request_timeout: float = 900) -> int:
        """Bulk-write `{task, result, score, model_version}` dicts; returns how many were created.

        The project's bulk import (far faster than one POST per prediction), in chunks that bound
        request size and memory; large, because each import recounts the counters of EVERY task of the
        project (Label Studio 1.23): at 50,000 tasks 47,400 predictions took 158 s in chunks of 10,000
        and 32 s in one (`bench.job --tasks 50000`). No retries (a retry would duplicate predictions).
        Label Studio 1.23 answers 201 yet silently drops predictions that fail its validation (a
        score outside [0, 1], a result that does not fit the label config); an empty result is
        accepted. So the return value can be smaller than the input; a warning is logged then.
        """
        created = sent = 0
        it = iter(predictions)
        options = {"timeout": float(max(self.timeout, request_timeout)), "max_retries": 0}
        while chunk := [_clean_prediction(p) for p in islice(it, chunk_size)]:
            if any("cluster" in p for p in chunk):
                created += self.create_each(chunk)
            else:
                response = self.ls.projects.import_predictions(id=project_id, request=chunk, request_options=options)
                created += response.created if response.created is not None else len(chunk)
            sent += len(chunk)
        if created < sent:
            log.warning("Label Studio kept %d of %d predictions for project %s; the rest failed its validation "
                        "(score outside [0, 1] or a result that does not match the label config)",
                        created, sent, project_id)
        return created

    def create_each(self, predictions: list[dict], workers: int = 4) -> int:
        """One create request per prediction: Label Studio 1.23's bulk import drops `cluster`, and a result
        whose choice is not in the config, which only its predictions API keeps (tens of requests per second
        on SQLite, not hundreds)."""
        def create(p: dict) -> int:
            try:
                self.ls.predictions.create(**p, request_options={"max_retries": 0})
                return 1
            except ApiError as exc:
                if exc.status_code in (401, 403, 404):
                    raise
                log.warning("Label Studio refused the prediction of task %s: %s", p.get("task"), exc.body)
                return 0

        with ThreadPoolExecutor(workers, thread_name_prefix="isal-predictions") as pool:
            return sum(pool.map(create, predictions))

    def set_model_version(self, project_id: int, version: str, sampling: str | None = "Uncertainty sampling") -> None:
        """Point the project at `version`: its predictions drive the Data Manager score column and `/next`.

        "Uncertainty sampling" serves the lowest score first. Label Studio rejects
        (ApiError 400) a version that has neither predictions nor a live model, so
        write the predictions first. `sampling=None` leaves the sampling as it is.
        """
        kwargs: dict[str, Any] = {"model_version": version}
        if sampling is not None:
            kwargs["sampling"] = sampling
        self.ls.projects.update(id=project_id, **kwargs)

    def project_model_version(self, project_id: int) -> str:
        """The model version the project serves by ("" when none is set)."""
        return self.ls.projects.get(id=project_id).model_version or ""

    def model_versions(self, project_id: int) -> dict[str, int]:
        """{model version: number of its predictions} of the project."""
        response = self.request("GET", f"api/projects/{int(project_id)}/model-versions/")
        data = response.json()
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def delete_version_predictions(self, project_id: int, version: str, workers: int = 4) -> int:
        """Delete every prediction of `version` in the project, one request each; how many went.

        Label Studio's own deletion of a version (DELETE .../model-versions/) is one transaction that
        locks every task it touches until it ends (SQLite: the whole database), so an annotation of
        any of them waits for all of it: 5,000 predictions held annotations 42 s on PostgreSQL and
        58 s on SQLite (`python -m bench.ls_lock`). One prediction per transaction, an annotation
        waits for one deletion at most. A prediction already gone (404) counts as deleted.
        """
        listed = self.request("GET", "api/predictions/", params={"project": int(project_id)},
                              request_options={"timeout_in_seconds": max(self.timeout, 600)}).json()
        ids = [p["id"] for p in listed if p.get("model_version") == version]

        def delete(prediction_id: int) -> int:
            self.request("DELETE", f"api/predictions/{int(prediction_id)}/", ok=(204, 404))
            return 1

        with ThreadPoolExecutor(workers, thread_name_prefix="isal-prune") as pool:
            return sum(pool.map(delete, ids))

    # -- projects (the demo sets one up with these) ---------------------------
    def create_project(self, title: str, label_config: str, **fields: Any) -> int:
        return self.ls.projects.create(title=title, label_config=label_config, **fields).id

    def find_project(self, title: str) -> int | None:
        """Id of the first project with this exact title, or None."""
        for p in self.ls.projects.list(title=title):
            if p.title == title:
                return p.id
        return None

    def add_local_storage(self, project_id: int, path: str | os.PathLike, title: str = "local files") -> int:
        """Let the project's tasks read /data/local-files/?d=<rel> under `path` (under the server's
        LOCAL_FILES_DOCUMENT_ROOT; else Label Studio answers 404). No sync: tasks are imported explicitly."""
        return self.ls.import_storage.local.create(project=project_id, path=str(path), title=title).id

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Create tasks from data dicts; returns their ids in order."""
        response = self.ls.projects.import_tasks(id=project_id, request=tasks, return_task_ids=True)
        return list(response.task_ids)

    def create_annotation(self, task_id: int, result: list[dict]) -> int:
        return self.ls.annotations.create(id=task_id, result=result).id

    def connect_ml_backend(self, project_id: int, url: str, title: str = "ISAL", *,
                           basic_auth: tuple[str, str] | None = None) -> int:
        """Add an ML backend to the project (Label Studio calls its /health and /setup, and creates
        a webhook to <url>/webhook for every project event); returns the backend's id."""
        kwargs: dict[str, Any] = {}
        if basic_auth:
            kwargs.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        return self.ls.ml.create(url=url, project=project_id, is_interactive=False, title=title, **kwargs).id

    # -- files ---------------------------------------------------------------
    def absolute_url(self, url_or_path: str) -> str:
        """Task data URL -> absolute URL (`/data/...`, `upload/...` and other paths are on this server)."""
        u = url_or_path.strip()
        if u.startswith(("http://", "https://")):
            return u
        if u.startswith(("upload/", "/upload/")):
            u = "/data/" + u.lstrip("/")
        return f"{self.url}/{u.lstrip('/')}"

    def download(self, url_or_path: str, dest_dir: str | os.PathLike, verify=None) -> Path:
        """Fetch a task file into `dest_dir` and return its path; cached by URL (a hash of it names the file,
        so a second call costs no request), written atomically (readers never see a partial file), with
        `verify` only once verify(file) returned (a cached file needs no second check). Which hosts may be
        fetched is the policy's (download_policy: Label Studio's origin by default), checked again on every
        redirect; auth headers go only to this server's origin. Raises DownloadError naming the URL and status
        (401 bad key, 403, 404 missing file -- also Label Studio's answer when no local storage of the project
        covers a /data/local-files/ path), or with status None on timeouts/network errors."""
        return self.cached(url_or_path, dest_dir) or fetch_file(
            self._http, self.absolute_url(url_or_path), self._cache_path(url_or_path, dest_dir), self.policy,
            self._auth_headers, self.timeout, verify)

    def cached(self, url_or_path: str, dest_dir: str | os.PathLike) -> Path | None:
        """The file `download` would return without a request (its access time refreshed: LRU), else None."""
        dest = self._cache_path(url_or_path, dest_dir)
        try:
            os.utime(dest, ns=(time.time_ns(), dest.stat().st_mtime_ns))  # a hit: newer access time, same file
        except FileNotFoundError:
            return None
        return dest

    def _cache_path(self, url_or_path: str, dest_dir: str | os.PathLike) -> Path:
        if url_or_path.startswith(_CLOUD_SCHEMES):
            raise DownloadError(url_or_path, None, "raw cloud URI: use the presign URL Label Studio "
                                "returns in task data (iter_tasks resolves them)")
        url = self.absolute_url(url_or_path)
        return Path(dest_dir) / (hashlib.sha256(url.encode()).hexdigest()[:32] + _suffix(url))

    def _auth_headers(self) -> dict[str, str]:
        """The SDK's current Authorization header (`Token <key>`, or `Bearer <access>` for a PAT): the SDK keeps
        the exchanged access token private, and its client wrapper is the one place that refreshes it."""
        return {"Authorization": self.ls._client_wrapper.get_headers()["Authorization"]}


def _suffix(url: str) -> str:
    """File extension for the cache name (from ?d= of local-files URLs, else the path)."""
    parts = urlsplit(url)
    name = (parse_qs(parts.query).get("d") or [parts.path])[-1]
    m = _SUFFIX.search(name)
    return m.group(0).lower() if m else ""


def _clean_prediction(p: dict) -> dict:
    p = dict(p)
    p["task"] = int(p["task"])
    if p.get("score") is not None:
        p["score"] = float(p["score"])
    return p


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
