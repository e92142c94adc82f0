"""End to end against the running compose stack (docker/docker-compose.yml + docker/compose.host.yml):
Label Studio on PostgreSQL, the backend's web container, its worker container and Redis. `make test-docker` starts
the stack, runs this script and tears the stack down. A standalone script (pytest does not collect it).

Over HTTP only: CIFAR-10 JPGs (../shared/data/cifar10-jpg.zip) uploaded to Label Studio as files (its
container sees no host file), the test split flagged `isal_reference` and annotated, part of the train
split annotated; the backend connected to the project; Label Studio's "Start training"; then:
  - the job finished with a model version, run by the worker container (its RQ log names the job; the
    web container's log has no training) through Redis (the job row is in Redis' `isal:jobs` hash and
    RQ's `isal` queue finished a job);
  - Label Studio holds one prediction of that version per unlabeled task, and GET /api/projects/<id>/next
    serves the task whose prediction scores lowest (the backend's top task); the predictions are rows
    of the `db` service's PostgreSQL.
Environment: LABEL_STUDIO_API_KEY (required), LABEL_STUDIO_URL, BACKEND_URL, REDIS_URL, COMPOSE (the
compose command, for `logs`).
"""
from __future__ import annotations

import io
import json
import os
import random
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.labelstudio.client import LabelStudioAPI  # noqa: E402
from backend.tools.demo import choice_result, label_config  # noqa: E402
from isal_core.data.cifar10 import CLASSES, SHARED_CIFAR10  # noqa: E402

LS_URL = os.environ.get("LABEL_STUDIO_URL", "http://127.0.0.1:18080").rstrip("/")
BACKEND_URL = os.environ.get("BACKEND_URL", "http://127.0.0.1:19090").rstrip("/")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:16379/0")
COMPOSE = shlex.split(os.environ.get("COMPOSE", "docker compose -p isal-e2e -f docker/docker-compose.yml "
                                                 "-f docker/compose.host.yml"))
N_TRAIN, N_REFERENCE, N_LABELED = 40, 10, 20
T0 = time.monotonic()


def lap(what: str) -> None:
    print(f"[docker e2e] {time.monotonic() - T0:6.1f} s  {what}", flush=True)


def wait_http(url: str, timeout: float, headers: dict | None = None) -> None:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, headers=headers, timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(1)
    raise AssertionError(f"{url} not up after {timeout:.0f} s: {last}")


def pick_images(seed: int = 0) -> list[tuple[str, str, bytes]]:
    """[(split, label, jpg bytes)]: N_TRAIN train and N_REFERENCE test images, round robin over the classes."""
    rng, out = random.Random(seed), []
    with zipfile.ZipFile(SHARED_CIFAR10) as z:
        names = [n for n in z.namelist() if n.endswith(".jpg")]
        for split, n in (("train", N_TRAIN), ("test", N_REFERENCE)):
            by_class = {c: sorted(m for m in names if m.startswith(f"{split}/{c}/")) for c in CLASSES}
            for i in range(n):
                c = CLASSES[i % len(CLASSES)]
                name = rng.choice(by_class[c])
                by_class[c].remove(name)
                out.append((split, c, z.read(name)))
    return out


def upload(ls, headers: dict, pid: int, images) -> dict[int, tuple[str, str]]:
    """The images as file uploads (one form field per file); {task id: (split, label)}."""
    files = [(f"file{i}", (f"i{i:03d}-{split}-{label}.jpg", io.BytesIO(data), "image/jpeg"))
             for i, (split, label, data) in enumerate(images)]
    r = requests.post(f"{LS_URL}/api/projects/{pid}/import", files=files, headers=headers, timeout=120)
    assert r.status_code == 201, r.text
    by_task = {}
    for t in ls.tasks.list(project=pid, fields="all", page_size=500):
        # Label Studio keeps the name after a prefix of its own: /data/upload/<project>/<hash>-i007-train-cat.jpg
        _, split, label = Path(t.data["image"]).stem.rsplit("-", 2)
        by_task[t.id] = (split, label)
    assert len(by_task) == len(images), (len(by_task), len(images))
    return by_task


def compose_logs(service: str) -> str:
    return subprocess.run([*COMPOSE, "logs", "--no-color", service], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout


def status_of(pid: int) -> dict:
    return requests.get(f"{BACKEND_URL}/status", params={"project": pid}, timeout=10).json()


def wait_for_job(pid: int, timeout: float = 600) -> tuple[dict, set]:
    """Poll /status until a job started and none runs or waits; returns (status, owners seen while it ran)."""
    deadline, owners, status = time.monotonic() + timeout, set(), None
    while time.monotonic() < deadline:
        status = status_of(pid)
        job = status["job"]
        if job.get("worker"):
            owners.add(job["worker"])
        if job["jobs_started"] >= 1 and job["state"] == "idle" and not job["pending"]:
            return status, owners
        time.sleep(0.3)
    raise AssertionError(f"the job of project {pid} did not finish in {timeout:.0f} s: {status}")


def main() -> None:
    key = os.environ["LABEL_STUDIO_API_KEY"]
    headers = {"Authorization": f"Token {key}"}
    wait_http(f"{BACKEND_URL}/health", 180)
    wait_http(f"{LS_URL}/api/projects", 600, headers)
    lap(f"Label Studio ({LS_URL}) and the backend ({BACKEND_URL}) are up")

    api = LabelStudioAPI(LS_URL, key)
    ls = api.ls
    pid = ls.projects.create(title="docker e2e", label_config=label_config()).id
    images = pick_images()
    by_task = upload(ls, headers, pid, images)
    reference = sorted(t for t, (split, _) in by_task.items() if split == "test")
    train = sorted(t for t, (split, _) in by_task.items() if split == "train")
    for t in reference:
        data = ls.tasks.get(id=t).data
        ls.tasks.update(id=t, data={**data, "isal_reference": True})
    for t in reference + train[:N_LABELED]:
        ls.annotations.create(id=t, result=choice_result(by_task[t][1]))
    lap(f"project {pid}: {len(images)} images uploaded, {len(reference)} reference + {N_LABELED} annotated")

    ml = ls.ml.create(url=BACKEND_URL, project=pid, is_interactive=False, title="ISAL (docker)")
    assert status_of(pid)["model_version"] == "untrained"
    ls.ml.train(id=ml.id)  # Label Studio's "Start training": POST {backend}/train
    status, owners = wait_for_job(pid)
    lap(f"trained: {status['model_version']} (owners seen while running: {sorted(owners) or 'none'})")
    assert status["last_error"] is None, status
    version = status["model_version"]
    assert version.startswith(f"isal-{pid}-"), status
    assert status["reference_source"] == "isal_reference", status
    assert status["counts"]["labeled"] == N_LABELED and status["counts"]["reference"] == N_REFERENCE, status
    assert all(o.startswith("isal-worker:") for o in owners), owners  # host:pid:token of the worker container

    # The worker container ran it, through RQ; the web container only queued it.
    worker_log, web_log = compose_logs("worker"), compose_logs("isal-backend")
    assert "job worker up: RQ on" in worker_log, worker_log[-3000:]
    assert "backend.worker.run_claimable()" in worker_log, worker_log[-3000:]
    assert "backend.worker.run_claimable()" not in web_log and "job worker up" not in web_log, web_log[-3000:]
    # ... through Redis: the job row lives there, and RQ's queue finished the job.
    import redis
    from rq import Queue

    conn = redis.Redis.from_url(REDIS_URL)
    row = json.loads(conn.hget("isal:jobs", str(pid)))
    assert row["started"] >= 1 and not row["running"], row
    finished = Queue("isal", connection=conn).finished_job_registry
    assert finished.count >= 1, "RQ finished no job"
    lap(f"the worker container ran the job through Redis (RQ finished {finished.count})")

    scores, reviewed = {}, 0
    for t in ls.tasks.list(project=pid, fields="all", page_size=500):
        mine = [p for p in t.predictions or [] if p.model_version == version]
        if t.annotations:  # at most the review's prediction: the model's own label, the review's place as score
            assert len(mine) <= 1, (t.id, mine)
            reviewed += len(mine)
            continue
        assert len(mine) == 1, (t.id, mine)
        scores[t.id] = mine[0].score
    assert len(scores) == N_TRAIN - N_LABELED and all(0 <= s <= 1 for s in scores.values()), scores
    assert reviewed == status["counts"]["reviewed"] > 0, (reviewed, status["counts"])
    top = status["top_task"]
    assert scores[top] == min(scores.values()), (top, scores)
    assert api.project_model_version(pid) == version
    served = api.next_task(pid)
    assert served is not None and served["id"] == top, (served and served["id"], top)
    lap(f"Label Studio holds {len(scores)} predictions of {version}; /next serves the top task {top}")
    # ... in PostgreSQL (the compose file's `db` service), not in a SQLite file of its container
    sql = f"SELECT count(*) FROM prediction WHERE project_id = {int(pid)} AND model_version = '{version}'"
    held = subprocess.run([*COMPOSE, "exec", "-T", "db", "psql", "-p", os.environ.get("PGPORT", "15432"), "-U",
                           "labelstudio", "-d", "labelstudio", "-tAc", sql],  # its socket: no password
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert held.returncode == 0 and int(held.stdout.strip()) == len(scores) + reviewed, (held.stdout, held.stderr)
    lap(f"PostgreSQL's prediction table holds them ({held.stdout.strip()} rows)")
    api.close()
    print("[docker e2e] PASSED", flush=True)


if __name__ == "__main__":
    main()
