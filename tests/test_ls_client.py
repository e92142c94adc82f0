"""backend.labelstudio.client against a real Label Studio server (see tests/ls_server.py)."""

from __future__ import annotations

import socket
import uuid

import numpy as np
import pytest
import requests
from PIL import Image

from backend.errors import DownloadError
from backend.labelstudio.client import ApiError, LabelStudioAPI

pytestmark = pytest.mark.integration

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image"><Choice value="a"/><Choice value="b"/></Choices></View>'
)
CHOICE_A = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["a"]}}]
N_TASKS = 20


def make_project(label_studio, n_tasks: int = N_TASKS) -> tuple[int, list[int], dict[int, str]]:
    """A project whose tasks point at fresh 32x32 JPGs served as /data/local-files/?d=<rel>.

    Label Studio serves a local file only if a local storage of a project the user
    can see covers the file's directory (else 404), so one is connected (no sync:
    tasks are imported explicitly).
    """
    ls = label_studio.client()
    subdir = f"imgs_{uuid.uuid4().hex[:8]}"
    img_dir = label_studio.files_root / subdir
    img_dir.mkdir(parents=True)
    rels = []
    for i in range(n_tasks):
        Image.new("RGB", (32, 32), (i * 12 % 256, 255 - i * 12 % 256, 64)).save(img_dir / f"img_{i:02d}.jpg")
        rels.append(f"{subdir}/img_{i:02d}.jpg")
    project = ls.projects.create(title=f"ls_client {subdir}", label_config=LABEL_CONFIG)
    ls.import_storage.local.create(project=project.id, path=str(img_dir), title=subdir)
    imported = ls.projects.import_tasks(
        id=project.id, request=[{"image": f"/data/local-files/?d={r}"} for r in rels], return_task_ids=True)
    assert imported.task_count == n_tasks
    task_ids = list(imported.task_ids)
    return project.id, task_ids, dict(zip(task_ids, rels))


@pytest.fixture(scope="module")
def project(label_studio):
    return make_project(label_studio)


@pytest.fixture(params=["legacy", "pat"])
def api(request, label_studio):
    with LabelStudioAPI(label_studio.url, label_studio.token(request.param)) as a:
        yield a


def test_iter_tasks_returns_every_task_with_data(label_studio, project, api):
    project_id, task_ids, rels = project
    tasks = list(api.iter_tasks(project_id, page_size=7))  # 3 pages and the 404 after them
    assert [t["id"] for t in tasks] == task_ids
    for t in tasks:
        assert t["data"] == {"image": f"/data/local-files/?d={rels[t['id']]}"}
        assert t["annotations"] == [] and t["predictions"] == []
    assert "<Choices" in api.project_label_config(project_id)


def test_iter_tasks_unknown_project_raises(api):
    with pytest.raises(ApiError) as e:
        list(api.iter_tasks(10**6))
    assert e.value.status_code == 404


def test_download_fetches_and_caches(label_studio, project, api, tmp_path):
    _, task_ids, rels = project
    tid = task_ids[3]
    url = f"/data/local-files/?d={rels[tid]}"
    path = api.download(url, tmp_path / "cache")
    assert path.read_bytes() == (label_studio.files_root / rels[tid]).read_bytes()
    with Image.open(path) as im:
        assert im.size == (32, 32)
    mtime = path.stat().st_mtime_ns
    assert api.download(url, tmp_path / "cache") == path
    assert path.stat().st_mtime_ns == mtime
    # A cached file needs no request: even a client with a wrong key gets it.
    with LabelStudioAPI(label_studio.url, "0" * 40) as bad:
        assert bad.download(url, tmp_path / "cache") == path
    # Different URLs, different files; no temp files left behind.
    other = api.download(f"/data/local-files/?d={rels[task_ids[4]]}", tmp_path / "cache")
    assert other != path
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([path.name, other.name])


def test_a_file_enters_the_cache_only_once_verified_and_is_not_checked_again(label_studio, project, api, tmp_path):
    _, task_ids, rels = project
    url = f"/data/local-files/?d={rels[task_ids[5]]}"
    checked = []

    def refuse(tmp):
        checked.append(tmp)
        raise ValueError("not an image")

    with pytest.raises(ValueError):
        api.download(url, tmp_path / "cache", verify=refuse)
    assert list((tmp_path / "cache").iterdir()) == []  # refused: nothing cached, no temp file left
    path = api.download(url, tmp_path / "cache", verify=checked.append)  # fetched again, accepted
    assert len(checked) == 2 and path.read_bytes() == (label_studio.files_root / rels[task_ids[5]]).read_bytes()
    assert api.download(url, tmp_path / "cache", verify=refuse) == path and len(checked) == 2  # a hit: no check


def test_download_uploaded_file(label_studio, api, tmp_path):
    """Files uploaded through the UI come as /data/upload/<project>/<name>: the most common case.

    The SDK has no file-upload call, so the upload itself is a raw multipart import.
    """
    ls = label_studio.client()
    p = ls.projects.create(title="ls_client upload", label_config=LABEL_CONFIG)
    src = tmp_path / "up.jpg"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(src)
    with open(src, "rb") as f:
        r = requests.post(f"{label_studio.url}/api/projects/{p.id}/import", params={"return_task_ids": "true"},
                          headers={"Authorization": f"Token {label_studio.legacy_token}"},
                          files={"file": ("up.jpg", f, "image/jpeg")}, timeout=60)
    assert r.status_code == 201, r.text
    (task,) = api.iter_tasks(p.id)
    assert task["data"]["image"].startswith(f"/data/upload/{p.id}/")
    assert api.download(task["data"]["image"], tmp_path / "cache").read_bytes() == src.read_bytes()


def test_download_missing_file_is_404(project, api, tmp_path):
    _, _, rels = project
    subdir = next(iter(rels.values())).split("/")[0]
    with pytest.raises(DownloadError) as e:
        api.download(f"/data/local-files/?d={subdir}/no_such_file.jpg", tmp_path)
    assert e.value.status == 404 and "404" in str(e.value) and "no_such_file.jpg" in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad_key", ["0" * 40, "not-a-token"])
def test_download_bad_token_is_401(label_studio, project, tmp_path, bad_key):
    _, task_ids, rels = project
    url = f"/data/local-files/?d={rels[task_ids[0]]}"
    with LabelStudioAPI(label_studio.url, bad_key) as bad, pytest.raises(DownloadError) as e:
        bad.download(url, tmp_path)
    assert e.value.status == 401 and "401" in str(e.value) and rels[task_ids[0]] in str(e.value)


def test_download_bad_personal_token_is_401(label_studio, project, tmp_path):
    _, task_ids, rels = project
    pat = label_studio.personal_token()
    forged = pat[:-4] + ("AAAA" if not pat.endswith("AAAA") else "BBBB")  # still a JWT, bad signature
    with LabelStudioAPI(label_studio.url, forged) as bad, pytest.raises(DownloadError) as e:
        bad.download(f"/data/local-files/?d={rels[task_ids[0]]}", tmp_path)
    assert e.value.status == 401 and "401" in str(e.value)


def test_download_timeout(tmp_path):
    """A server that accepts the connection and never answers: DownloadError, not a hang."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        with LabelStudioAPI(url, "0" * 40, timeout=1) as api, pytest.raises(DownloadError) as e:
            api.download("/data/local-files/?d=x/y.jpg", tmp_path)
    assert e.value.status is None and "timed out" in str(e.value) and url in str(e.value)


def test_predictions_drive_next_task(label_studio):
    project_id, task_ids, _ = make_project(label_studio)
    ls = label_studio.client()
    api = LabelStudioAPI(label_studio.url, label_studio.personal_token())

    rng = np.random.default_rng(0)
    # Distinct numpy scores; Label Studio only keeps scores in [0, 1].
    scores = dict(zip(task_ids, (rng.permutation(N_TASKS) + 5).astype(np.float32) / 40))
    by_score = sorted(task_ids, key=scores.get)
    n = api.write_predictions(
        project_id,
        ({"task": t, "result": CHOICE_A, "score": scores[t], "model_version": "v1"} for t in task_ids),
        chunk_size=7,
    )
    assert n == N_TASKS
    # Another version with lower scores on the tasks v1 ranks last.
    decoys = by_score[-3:]
    assert api.write_predictions(
        project_id, [{"task": t, "result": CHOICE_A, "score": 0.01 * i, "model_version": "other"}
                     for i, t in enumerate(decoys)]) == 3

    with pytest.raises(ApiError) as e:  # a version without predictions is refused
        api.set_model_version(project_id, "never-written")
    assert e.value.status_code == 400

    api.set_model_version(project_id, "v1")
    got = ls.projects.get(id=project_id)
    assert (got.model_version, got.sampling) == ("v1", "Uncertainty sampling")

    first = api.next_task(project_id)
    assert first["id"] == by_score[0]
    assert api.next_task(project_id)["id"] == by_score[0]  # locked to us, not a second choice

    # Annotated tasks are not served again: annotate the lowest two, get the third.
    for t in by_score[:2]:
        ls.annotations.create(id=t, result=CHOICE_A)
    assert api.next_task(project_id)["id"] == by_score[2]

    # iter_tasks carries annotations and both versions' predictions.
    tasks = {t["id"]: t for t in api.iter_tasks(project_id)}
    for t in by_score[:2]:
        (ann,) = tasks[t]["annotations"]
        assert ann["result"] == CHOICE_A and ann["was_cancelled"] is False
    assert {p["model_version"] for p in tasks[decoys[0]]["predictions"]} == {"v1", "other"}
    assert [p["score"] for p in tasks[by_score[2]]["predictions"]] == [pytest.approx(float(scores[by_score[2]]))]

    # Switching the version switches the order: "other" serves its lowest score.
    ls.annotations.create(id=by_score[2], result=CHOICE_A)  # release our lock
    api.set_model_version(project_id, "other", sampling=None)
    assert api.next_task(project_id)["id"] == decoys[0]

    # When every task is annotated, there is no next task.
    for t in task_ids:
        if not tasks[t]["annotations"] and t != by_score[2]:
            ls.annotations.create(id=t, result=CHOICE_A)
    assert api.next_task(project_id) is None
    api.close()


def test_invalid_predictions_are_dropped_with_a_warning(label_studio, caplog):
    """Label Studio answers 201 but keeps only predictions that pass its validation."""
    project_id, task_ids, _ = make_project(label_studio, n_tasks=5)
    bad_choice = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["zzz"]}}]
    preds = [
        {"task": task_ids[0], "result": CHOICE_A, "score": 0.5, "model_version": "dropped"},
        {"task": task_ids[1], "result": [], "score": 0.0, "model_version": "dropped"},  # empty result is fine
        {"task": task_ids[2], "result": CHOICE_A, "score": 1.5, "model_version": "dropped"},
        {"task": task_ids[3], "result": CHOICE_A, "score": -0.2, "model_version": "dropped"},
        {"task": task_ids[4], "result": bad_choice, "score": 0.5, "model_version": "dropped"},
    ]
    with LabelStudioAPI(label_studio.url, label_studio.legacy_token) as api:
        with caplog.at_level("WARNING", logger="backend.labelstudio.client"):
            assert api.write_predictions(project_id, preds) == 2
        assert "kept 2 of 5" in caplog.text
        kept = {t["id"]: t["predictions"] for t in api.iter_tasks(project_id)}
    assert [len(kept[t]) for t in task_ids] == [1, 1, 0, 0, 0]


def test_tasks_with_annotations_reads_what_the_full_listing_reads(label_studio, api):
    """The fast path (task-only listing + one export) gives every task the annotations, skipped ones
    included, that the full listing gives it."""
    ls = label_studio.client()
    pid, task_ids, _ = make_project(label_studio, n_tasks=6)
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]
    ls.annotations.create(id=task_ids[0], result=result)
    ls.annotations.create(id=task_ids[1], result=result)
    ls.annotations.create(id=task_ids[1], result=[], was_cancelled=True)  # a skip after a label
    ls.annotations.create(id=task_ids[2], result=[], was_cancelled=True)  # only skipped
    full = {t["id"]: t for t in api.iter_tasks(pid)}
    fast = {t["id"]: t for t in api.tasks_with_annotations(pid, page_size=4)}
    assert sorted(fast) == sorted(full) == sorted(task_ids)
    key = lambda a: (a["id"], bool(a.get("was_cancelled")), a.get("result"))  # noqa: E731
    for tid in task_ids:
        assert fast[tid]["data"] == full[tid]["data"]
        assert sorted(map(key, fast[tid]["annotations"])) == sorted(map(key, full[tid]["annotations"])), tid
    assert len(fast[task_ids[1]]["annotations"]) == 2 and fast[task_ids[3]]["annotations"] == []
