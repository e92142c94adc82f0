"""The durable job state (backend.scheduling.state) and the scheduler over it: atomic across processes,
and a job whose process died is claimed and run again."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from backend.scheduling.manager import JobManager
from backend.scheduling.state import JobTable, owner_gone, process_id

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_request_is_atomic_across_processes(tmp_path, kind, request):
    """Eight processes ask for a job at once: one starts it, one waits, six are coalesced."""
    db = tmp_path / "jobs.sqlite"
    url = None
    if kind == "redis":
        import redis

        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()
    JobTable(db, redis_url=url)
    go = tmp_path / "go"
    code = f"""
        import os, time
        from backend.scheduling.state import JobTable
        table = JobTable({str(db)!r}, redis_url={url!r})
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        print(table.request(3, "test"))
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True) for _ in range(8)]
    time.sleep(2)
    go.write_text("")
    outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert outcomes == ["coalesced"] * 6 + ["pending", "started"]
    snap = JobTable(db, redis_url=url).snapshot(3)
    assert snap["state"] == "running" and snap["pending"] and snap["requests_coalesced"] == 6
    assert snap["jobs_started"] == 1


def test_a_job_whose_process_died_is_claimed_once(tmp_path):
    db = tmp_path / "jobs.sqlite"
    owner = run_python(f"""
        from backend.scheduling.state import JobTable, process_id
        assert JobTable({str(db)!r}).request(5, "START_TRAINING") == "started"
        print(process_id())
    """).strip()
    assert owner_gone(owner) and not owner_gone(process_id())
    table = JobTable(db)
    assert table.snapshot(5)["state"] == "running"
    (claimed,) = table.claim_orphans()
    assert claimed[0] == 5 and "resumed" in claimed[1] and "START_TRAINING" in claimed[1]
    assert table.claim_orphans() == [], "the new owner is alive: nothing to claim twice"
    snap = table.snapshot(5)
    assert snap["jobs_resumed"] == 1 and snap["jobs_started"] == 2
    assert table.finish(5, {"status": "done"}, None) is None
    assert table.snapshot(5)["state"] == "idle" and table.snapshot(5)["last_job"] == {"status": "done"}


def test_a_job_that_kills_its_process_every_time_is_given_up_and_another_project_runs(tmp_path):
    """Each sweep (one job a worker, limit=1) claims the dead job and dies in it, as an out-of-memory job would:
    after MAX_RETRIES runs again it is marked failed with the reason, and the next sweep runs project 6's job."""
    from backend.scheduling.state import MAX_RETRIES

    db = tmp_path / "jobs.sqlite"
    run_python(f"""
        from backend.scheduling.state import JobTable
        assert JobTable({str(db)!r}).request(5, "START_TRAINING") == "started"
    """)  # the job's process is gone before it finished
    assert JobTable(db).request(6, "annotations", claim=False) == "queued"  # another project waits for a worker
    sweep = f"""
        from backend.scheduling.state import JobTable
        print([p for p, _ in JobTable({str(db)!r}).claim_orphans(limit=1)])
    """
    claimed = [run_python(sweep).strip() for _ in range(MAX_RETRIES + 1)]
    assert claimed == ["[5]"] * MAX_RETRIES + ["[6]"], claimed
    snap = JobTable(db).snapshot(5)
    assert snap["state"] == "idle" and snap["jobs_resumed"] == MAX_RETRIES
    assert f"stopped its process {MAX_RETRIES + 1} times" in snap["last_error"]
    assert "START_TRAINING" in snap["last_error"]
    assert snap["last_job"]["status"] == "failed" and snap["recent_jobs"][-1]["status"] == "failed"
    assert JobTable(db).request(5, "START_TRAINING") == "started"  # the user can try again; it counts afresh


@pytest.fixture(params=["sqlite", "redis"])
def table(request, tmp_path):
    """The same transitions on both row stores (the Redis one on a real server)."""
    if request.param == "sqlite":
        return JobTable(tmp_path / "jobs.sqlite", stale_after=30)
    url = request.getfixturevalue("redis_url")
    import redis

    redis.Redis.from_url(url).flushdb()
    return JobTable(stale_after=30, redis_url=url)


def test_another_hosts_job_is_claimed_only_when_its_heartbeat_is_stale(table):
    assert table.request(1, "x") == "started" and table.request(2, "x") == "started"
    with table.rows.transaction() as tx:
        tx.put(1, {**tx.get(1), "owner": "elsewhere:1:abc", "heartbeat": time.time()})
        tx.put(2, {**tx.get(2), "owner": "elsewhere:2:abc", "heartbeat": time.time() - 31})
    assert table.claimable() == [2]
    assert [p for p, _ in table.claim_orphans()] == [2]


def test_finish_hands_the_pending_job_to_the_owner(table):
    assert table.request(1, "a") == "started"
    assert table.request(1, "b") == "pending"
    assert table.finish(1, {"status": "done"}, None) == "pending request"
    snap = table.snapshot(1)
    assert snap["state"] == "running" and not snap["pending"] and snap["jobs_started"] == 2
    assert table.finish(1, {"status": "failed"}, "boom") is None
    assert table.snapshot(1)["last_error"] == "boom" and table.snapshot(1)["state"] == "idle"


def test_event_counts_survive_a_new_manager(tmp_path):
    db = tmp_path / "jobs.sqlite"
    jobs = JobManager(lambda p, s: {}, retrain_every=10, table_path=db)
    for _ in range(4):
        jobs.annotation_event(9)
    assert JobManager(lambda p, s: {}, 10, db).snapshot(9)["events_since_request"] == 4


def test_the_sweep_runs_a_dead_processs_job_again(tmp_path):
    db = tmp_path / "jobs.sqlite"
    run_python(f"""
        from backend.scheduling.state import JobTable
        table = JobTable({str(db)!r})
        table.request(4, "START_TRAINING")
        table.update(4, phase="training")
    """)
    ran = []
    done = threading.Event()

    def job(project_id, set_phase):
        set_phase("training")
        ran.append(project_id)
        done.set()
        return {"model_version": "v"}

    jobs = JobManager(job, 10, db)
    assert jobs.snapshot(4)["phase"] == "training" and jobs.snapshot(4)["state"] == "running"
    assert jobs.sweep() == [4]
    assert done.wait(30) and jobs.wait_idle(4, 30)
    assert ran == [4] and jobs.sweep() == []
    snap = jobs.snapshot(4)
    assert snap["last_job"]["status"] == "done" and snap["last_job"]["reason"].startswith("resumed")
    assert snap["jobs_resumed"] == 1


def test_a_queued_job_is_claimed_by_one_worker_call(tmp_path):
    """JOB_RUNNER=worker: the web only queues; a worker's run_claimable (an RQ job's body) claims one
    project's job and runs it to the end, the other waits for the next call."""
    db = tmp_path / "jobs.sqlite"
    web = JobManager(lambda p, s: {}, 10, db, runs_jobs=False)
    assert web.request(1, "START_TRAINING") == "queued for the job worker"
    assert web.request(1, "START_TRAINING") == "coalesced into the pending job"
    assert web.request(2, "START_TRAINING") == "queued for the job worker"
    ran = []
    worker = JobManager(lambda p, s: ran.append(p) or {"model_version": f"v{p}"}, 10, db)
    assert worker.run_claimable() == [1] and ran == [1]
    assert worker.snapshot(1)["state"] == "idle" and worker.snapshot(1)["last_job"]["model_version"] == "v1"
    assert worker.snapshot(2)["pending"] and worker.run_claimable() == [2] and worker.run_claimable() == []
