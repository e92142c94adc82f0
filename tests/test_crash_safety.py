"""kill -9 of the backend mid-job, against a real Label Studio: after a restart it serves the last
complete version, ignores the half-written one, runs the interrupted job again, and Label Studio
holds exactly the predictions of published versions (none lost, none duplicated, none left over).

The job is held still at a named point (TEST_HOLD_AT: tests/fault_injection, loaded into the backend's
processes through PYTHONPATH, wraps the product's steps; nothing of it is in the product) so the kill lands exactly
while the version's checkpoint is half written, after its predictions are in Label Studio but
before the version is published, or after it is published but before the predictions of older
versions are deleted (KEEP_LS_VERSIONS=2: Label Studio keeps the newest two versions' predictions).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from backend.labelstudio.client import LabelStudioAPI
from backend.tools.servers import BackendProcess

try:
    from backend_helpers import choice_result, cifar_images, create_cifar_project, wait_for_job
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import choice_result, cifar_images, create_cifar_project, wait_for_job

#: Puts tests/fault_injection/sitecustomize.py into every process of a backend started with it (TEST_HOLD_AT).
HOLD_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parent / "fault_injection")}

pytestmark = pytest.mark.integration

N_TRAIN, N_REFERENCE, N_LABELED = 60, 10, 20


def status_of(backend: BackendProcess, pid: int) -> dict:
    return requests.get(f"{backend.url}/status", params={"project": pid}, timeout=10).json()


def version_dirs(model_dir: Path, pid: int) -> tuple[list[str], list[str]]:
    """(published version dirs, leftover temp dirs) of the project."""
    root = model_dir / str(pid)
    published = sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "meta.json").is_file()
                       and not d.name.startswith("."))
    return published, sorted(d.name for d in root.glob(".tmp-*"))


def wait_for_file(path: Path, backend: BackendProcess, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert backend.running(), backend.log_tail()
        assert time.monotonic() < deadline, f"the job never reached its hold point:\n{backend.log_tail()}"
        time.sleep(0.2)


def held_version(model_dir: Path, pid: int, published_before: list[str], point: str, api, pool: int) -> str:
    """The version of the job held at `point`, checked where the hold left it: a temp dir (not in Label
    Studio yet at "checkpoint", with all its predictions at "predictions"), or published and served."""
    published, temps = version_dirs(model_dir, pid)
    if point == "published":
        (held,) = set(published) - set(published_before)
        assert temps == [] and api.project_model_version(pid) == held, (published, temps)
        assert set(api.model_versions(pid)) == {*published_before[-2:], held}  # not pruned yet
        return held
    assert published == sorted(published_before) and len(temps) == 1, (published, temps)
    held = temps[0].removeprefix(".tmp-")
    if point == "predictions":  # in Label Studio, not yet published anywhere
        assert api.model_versions(pid)[held] == pool
    else:
        assert held not in api.model_versions(pid)
    return held


def connect_and_train(backend: BackendProcess, ls, pid: int) -> dict:
    """/setup the project, ask for a training, and return /status once the first job is done."""
    requests.post(f"{backend.url}/setup", json={"project": str(pid), "schema": ls.projects.get(id=pid).label_config},
                  timeout=30).raise_for_status()
    requests.post(f"{backend.url}/train", json={"project": str(pid)}, timeout=30).raise_for_status()
    return wait_for_job(lambda p: status_of(backend, p), pid, jobs_started=1)


def labeled_project(label_studio, n_train: int, seed: int, title: str):
    """(SDK client, API, project id, {task: image}, train task ids): the reference and N_LABELED train
    images annotated."""
    ls = label_studio.client()
    sub, images = cifar_images(label_studio.files_root, n_train, N_REFERENCE, seed=seed)
    pid, by_task, _ = create_cifar_project(ls, label_studio.files_root, sub, images, title)
    train = [t for t, im in by_task.items() if im.split == "train"]
    for t, im in by_task.items():
        if im.split == "test" or t in train[:N_LABELED]:
            ls.annotations.create(id=t, result=choice_result(im.label))
    return ls, LabelStudioAPI(label_studio.url, label_studio.token()), pid, by_task, train


def test_kill_9_mid_job_loses_nothing_and_the_job_runs_again(label_studio, tmp_path):
    token = label_studio.token()
    ls, api, pid, by_task, train = labeled_project(label_studio, N_TRAIN, 3, "crash safety")
    model_dir = tmp_path / "models"
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": token, "MODEL_DIR": str(model_dir),
           "ISAL_EPOCHS": "2", "ISAL_MIN_STEPS": "20", "ISAL_RETRAIN_EVERY": "0", "ISAL_SEED": "0",
           "KEEP_LS_VERSIONS": "2", "LOG_LEVEL": "INFO"}
    log = tmp_path / "backend.log"
    marker = tmp_path / "held"

    backend = BackendProcess(env, log_path=log).start()
    port = backend.port
    try:
        schema = ls.projects.get(id=pid).label_config
        setup = {"project": str(pid), "schema": schema}
        requests.post(f"{backend.url}/setup", json=setup, timeout=30).raise_for_status()
        requests.post(f"{backend.url}/train", json={"project": str(pid)}, timeout=30).raise_for_status()
        v1 = wait_for_job(lambda p: status_of(backend, p), pid, jobs_started=1)["model_version"]
    finally:
        backend.stop()
    # predictions per version: one ranking each unlabeled task, one review each labeled one (R apart), so
    # every train task, whatever is labeled
    written = N_TRAIN
    assert api.model_versions(pid) == {v1: written} and api.project_model_version(pid) == v1

    published_before, served = [v1], api.next_task(pid)["id"]
    for round_, point in enumerate(("checkpoint", "predictions", "published")):
        # the served task gets its label, so the interrupted job has something new to learn
        ls.annotations.create(id=served, result=choice_result(by_task[served].label))
        marker.unlink(missing_ok=True)
        backend = BackendProcess({**env, **HOLD_ENV, "TEST_HOLD_AT": point, "TEST_HOLD_FILE": str(marker)}, port=port,
                                 log_path=log).start()
        try:
            requests.post(f"{backend.url}/train", json={"project": str(pid)}, timeout=30).raise_for_status()
            wait_for_file(marker, backend)
            held = held_version(model_dir, pid, published_before, point, api, written)
        finally:
            backend.kill()
        if point == "published":  # it is published, and served: nothing of it may be lost
            published_before.append(held)

        offset = log.stat().st_size
        backend = BackendProcess(env, port=port, log_path=log).start()
        try:
            status = wait_for_job(lambda p: status_of(backend, p), pid, jobs_started=1)
            job = status["job"]
            assert job["jobs_resumed"] == round_ + 1 and job["last_job"]["reason"].startswith("resumed"), job
            assert status["last_error"] is None, status
            restart_log = log.read_text()[offset:]
            assert f"loaded model version {published_before[-1]}" in restart_log, restart_log[-3000:]
            if point != "published":
                assert f"removing .tmp-{held} left by an interrupted job" in restart_log
            new = status["model_version"]
            assert new not in published_before and new != held
            published, temps = version_dirs(model_dir, pid)
            assert published == sorted([*published_before, new]) and temps == [], (published, temps)
            if point == "predictions":
                assert job["last_job"]["reconciled"]["deleted_predictions"] == {held: written}
            # the newest two published versions keep exactly their predictions; the others and the
            # half-written ones left none
            counts = api.model_versions(pid)
            counted = {v: json.loads((model_dir / str(pid) / v / "meta.json").read_text())["counts"]
                       for v in [*published_before, new][-2:]}
            expected = {v: c["unlabeled"] + c["reviewed"] for v, c in counted.items()}
            assert counts == expected, (counts, expected)
            assert counts[new] == written and api.project_model_version(pid) == new
            assert api.next_task(pid)["id"] == status["top_task"]  # (locked to us until annotated)
            served = status["top_task"]
            versions = requests.get(f"{backend.url}/versions", params={"project": pid}, timeout=10).json()
            assert versions["versions"][0] == new and (point == "published") == (held in versions["versions"])
        finally:
            backend.stop()
        published_before.append(new)
    assert log.read_text().count("running it again") == 3


@pytest.mark.parametrize("queue", ["embedded", "redis"])
def test_a_killed_job_worker_is_restarted_and_the_web_keeps_serving(label_studio, tmp_path, queue, request):
    """`python -m backend` supervises its job worker: kill -9 of the worker mid-job, and the job runs again
    while the web process answers /health and /predict from the current version.

    embedded: the supervisor starts the worker again. redis (REDIS_URL, two gunicorn workers): the job
    ran in an RQ work horse; its RQ worker's sweep enqueues it again, and both web workers report one
    /status."""
    import os
    import signal

    token = label_studio.token()
    ls, api, pid, by_task, train = labeled_project(label_studio, 40, 4, f"worker kill {queue}")
    marker = tmp_path / "held"
    marker.write_text("")  # the first job runs through
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": token, "MODEL_DIR": str(tmp_path / "m"),
           "ISAL_EPOCHS": "2", "ISAL_MIN_STEPS": "20", "ISAL_RETRAIN_EVERY": "0", "LOG_LEVEL": "INFO",
           "TEST_HOLD_AT": "checkpoint", "TEST_HOLD_FILE": str(marker), **HOLD_ENV}
    if queue == "redis":
        import redis

        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()
        env.update(REDIS_URL=url, WORKERS="2")
    log = tmp_path / "backend.log"
    backend = BackendProcess(env, log_path=log).start()
    try:
        v1 = connect_and_train(backend, ls, pid)["model_version"]
        views = {json.dumps(status_of(backend, pid), sort_keys=True) for _ in range(20)}
        assert len(views) == 1, "every web worker reports the same /status"
        served = api.next_task(pid)["id"]
        ls.annotations.create(id=served, result=choice_result(by_task[served].label))

        marker.unlink()
        requests.post(f"{backend.url}/train", json={"project": str(pid)}, timeout=30).raise_for_status()
        wait_for_file(marker, backend)
        worker_pid = int(marker.read_text().split()[1])
        assert status_of(backend, pid)["job"]["worker"].split(":")[1] == str(worker_pid)
        os.kill(worker_pid, signal.SIGKILL)
        task = {"id": train[-1], "data": {"image": f"/data/local-files/?d={by_task[train[-1]].rel}"}}
        answers = []
        for _ in range(5):  # while the worker is down and coming back (a restart takes seconds: torch's import)
            assert requests.get(f"{backend.url}/health", timeout=5).status_code == 200
            r = requests.post(f"{backend.url}/predict", json={"tasks": [task], "project": f"{pid}.1"}, timeout=30)
            assert r.status_code == 200, r.text
            answers.append(r.json()["model_version"])
            time.sleep(0.2)
        assert answers == [v1] * 5, answers
        status = wait_for_job(lambda p: status_of(backend, p), pid, jobs_started=3)
        assert status["last_error"] is None and status["job"]["jobs_resumed"] == 1, status
        new = status["model_version"]
        assert new != v1 and api.project_model_version(pid) == new
        assert requests.post(f"{backend.url}/predict", json={"tasks": [task], "project": f"{pid}.1"},
                             timeout=30).json()["model_version"] == new
    finally:
        backend.stop()
    text = log.read_text()
    assert "running it again" in text
    if queue == "embedded":
        assert "the job worker exited (-9)" in text
    else:
        assert "RQ on redis://127.0.0.1" in text and "Booting worker" in text and text.count("Booting worker") >= 2


def test_a_job_runs_as_a_torchrun_group_that_dies_with_its_worker(label_studio, tmp_path):
    """ISAL_JOB_PROCS=2: the worker runs the job's training and scoring as a torchrun group (gloo on CPU)
    and publishes its result; kill -9 of the worker while the group works ends the group too (a job
    run again never runs beside a stale copy), and the restarted worker runs the job through."""
    import os
    import signal

    ls, api, pid, by_task, train = labeled_project(label_studio, 40, 5, "torchrun group")
    marker = tmp_path / "held"
    marker.write_text("")  # the first job runs through
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token(),
           "MODEL_DIR": str(tmp_path / "m"), "ISAL_EPOCHS": "2", "ISAL_MIN_STEPS": "20", "ISAL_RETRAIN_EVERY": "0",
           "ISAL_JOB_PROCS": "2", "LOG_LEVEL": "INFO", "TEST_HOLD_AT": "group", "TEST_HOLD_FILE": str(marker),
           **HOLD_ENV}
    log = tmp_path / "backend.log"
    backend = BackendProcess(env, log_path=log).start()
    try:
        status = connect_and_train(backend, ls, pid)
        assert status["last_error"] is None and status["job"]["last_job"]["processes"] == 2, status
        v1 = status["model_version"]
        assert api.project_model_version(pid) == v1 and api.next_task(pid)["id"] in train

        marker.unlink()
        requests.post(f"{backend.url}/train", json={"project": str(pid)}, timeout=30).raise_for_status()
        wait_for_file(marker, backend)
        rank0 = int(marker.read_text().split()[1])
        worker = int(status_of(backend, pid)["job"]["worker"].split(":")[1])
        assert rank0 != worker
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _alive(rank0):
            assert time.monotonic() < deadline, "rank 0 of the group outlived its worker"
            time.sleep(0.5)
        status = wait_for_job(lambda p: status_of(backend, p), pid, jobs_started=3)
        assert status["last_error"] is None and status["job"]["jobs_resumed"] == 1, status
        assert status["model_version"] != v1 and api.project_model_version(pid) == status["model_version"]
    finally:
        backend.stop()
    text = log.read_text()
    assert text.count("job as a torchrun group of 2 processes") == 3 and "the job worker exited (-9)" in text


def _alive(pid: int) -> bool:
    """pid runs (a zombie, dead but not reaped by its parent, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
