"""Load on the backend as Label Studio applies it, on loopback, bounded in count and time.

    python -m bench.load [--tasks 1000] [--predicts 200] [--batch 50] [--webhooks 500] [--storm-s 10]

A real local Label Studio and the backend under gunicorn (`python -m backend`, as users run
it), a project of CIFAR-10 images. After a first training job:
 1. while a second training job runs, `--predicts` concurrent POST /predict requests of
    `--batch` tasks each (the payload Label Studio sends): every answer must be a 200 with
    one scored result per task; p50 / p99 latency reported;
 2. a storm of `--webhooks` ANNOTATION_CREATED webhooks spread over `--storm-s` seconds:
    every one answered in under 1 s, and the trainings they cause are coalesced (at most
    one running and one waiting per project): reported and bounded.
Prints the figures and ends with one JSON line; exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from backend.tools.demo import label_config
from backend.tools.servers import BackendProcess, LabelStudioServer
from bench.job import project

from .common import write_result

WEBHOOK_LIMIT_S = 1.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def tree_rss_mb(pid: int) -> tuple[float, dict[str, float]]:
    """Resident memory of a process and every process below it (the supervisor, gunicorn's master and its
    web workers, the job worker and whatever they started), in MB: the total and each process's
    (pid and command line)."""
    parent, rss, names = {}, {}, {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        child = int(status.parent.name)
        parent[child] = int(fields.get("PPid", "0").strip())
        rss[child] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
        names[child] = cmdline[:80]
    tree, frontier = {pid}, [pid]
    while frontier:
        frontier = [c for c, pp in parent.items() if pp in frontier and c not in tree]
        tree.update(frontier)
    each = {f"{c} {names.get(c, '?')}": round(rss.get(c, 0.0), 1) for c in sorted(tree)}
    return sum(rss.get(c, 0.0) for c in tree), each


def status(url: str, pid: int) -> dict:
    return requests.get(f"{url}/status", params={"project": pid}, timeout=10).json()


def wait_idle(url: str, pid: int, started: int, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = status(url, pid)
        if s["job"]["jobs_started"] >= started and s["job"]["state"] == "idle" and not s["job"]["pending"]:
            return s
        time.sleep(0.5)
    raise TimeoutError(f"project {pid}: jobs still running after {timeout} s")


def predict_burst(url: str, pid: int, tasks: list[dict], n: int, batch: int) -> dict:
    """n concurrent /predict calls of `batch` tasks; latencies and failures."""
    payloads = [{"tasks": [tasks[(i * batch + j) % len(tasks)] for j in range(batch)], "project": f"{pid}.1700000000",
                 "label_config": label_config(), "params": {"login": None, "password": None, "context": None}}
                for i in range(n)]
    gate, latencies, failures = threading.Barrier(n), [], []

    def call(payload):
        gate.wait()
        t0 = time.perf_counter()
        try:
            r = requests.post(f"{url}/predict", json=payload, timeout=120)
            seconds = time.perf_counter() - t0
            body = r.json()
            results = body.get("results", [])
            bad = [x for x in results if "error" in x or not 0 <= x.get("score", -1) <= 1]
            if r.status_code != 200 or len(results) != len(payload["tasks"]) or bad:
                failures.append(f"HTTP {r.status_code}, {len(results)} results, {len(bad)} bad: {str(body)[:200]}")
            return seconds
        except requests.RequestException as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            return time.perf_counter() - t0

    with ThreadPoolExecutor(n) as pool:
        latencies = list(pool.map(call, payloads))
    return {"requests": n, "tasks_each": batch, "failures": len(failures), "failure_examples": failures[:3],
            "p50_s": round(percentile(latencies, 50), 3), "p99_s": round(percentile(latencies, 99), 3),
            "max_s": round(max(latencies), 3)}


def webhook_storm(url: str, pid: int, task_ids: list[int], n: int, seconds: float) -> dict:
    """n annotation webhooks, evenly spread over `seconds`, from 16 threads."""
    latencies, failures, t0 = [], [], time.perf_counter()

    def fire(i):
        time.sleep(max(0.0, t0 + i * seconds / n - time.perf_counter()))
        payload = {"action": "ANNOTATION_CREATED", "project": {"id": pid, "title": "bench load"},
                   "task": {"id": task_ids[i % len(task_ids)]}, "annotation": {"id": 10_000 + i, "result": []}}
        start = time.perf_counter()
        try:
            r = requests.post(f"{url}/webhook", json=payload, timeout=30)
            if r.status_code not in (200, 202):
                failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
        except requests.RequestException as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        return time.perf_counter() - start

    with ThreadPoolExecutor(16) as pool:
        latencies = list(pool.map(fire, range(n)))
    return {"webhooks": n, "spread_s": seconds, "took_s": round(time.perf_counter() - t0, 2),
            "failures": len(failures), "failure_examples": failures[:3],
            "p50_s": round(percentile(latencies, 50), 4), "p99_s": round(percentile(latencies, 99), 4),
            "max_s": round(max(latencies), 4), "over_1s": sum(s >= WEBHOOK_LIMIT_S for s in latencies)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--predicts", type=int, default=200)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--webhooks", type=int, default=500)
    ap.add_argument("--storm-s", type=float, default=10.0)
    ap.add_argument("--retrain-every", type=int, default=40)
    args = ap.parse_args(argv)
    checks: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp, LabelStudioServer() as server:
        pid = project(server, args.tasks)
        env = {"LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.legacy_token,
               "MODEL_DIR": str(Path(tmp) / "models"), "ISAL_RETRAIN_EVERY": str(args.retrain_every),
               "ISAL_SEED": "0", "LOG_LEVEL": "WARNING"}
        backend = BackendProcess(env, log_path=Path(tmp) / "backend.log").start()
        try:
            url = backend.url
            requests.post(f"{url}/setup", json={"project": f"{pid}.0", "schema": label_config()},
                          timeout=30).raise_for_status()
            t0 = time.perf_counter()
            requests.post(f"{url}/train", json={"project": f"{pid}.0"}, timeout=30).raise_for_status()
            first = wait_idle(url, pid, 1)
            job_s = time.perf_counter() - t0
            print(f"job 1: {job_s:.1f} s, {first['model_version']}", flush=True)
            tasks = [{"id": t.id, "data": t.data} for t in server.client().tasks.list(
                project=pid, fields="all", page_size=1000) if not t.annotations]
            rss_before, processes_before = tree_rss_mb(backend.pid)

            requests.post(f"{url}/train", json={"project": f"{pid}.0"}, timeout=30).raise_for_status()
            deadline = time.monotonic() + 60  # the job worker claims the queued job within a sweep
            while status(url, pid)["job"]["state"] != "running" and time.monotonic() < deadline:
                time.sleep(0.1)
            running_before = status(url, pid)["job"]["state"] == "running"
            burst = predict_burst(url, pid, tasks, args.predicts, args.batch)
            burst["job_running_before"] = running_before
            burst["job_running_after"] = status(url, pid)["job"]["state"] == "running"
            print(f"/predict x{args.predicts} during a job: {burst}", flush=True)
            checks["predict: no failures"] = burst["failures"] == 0
            checks["predict: a job ran throughout"] = running_before and burst["job_running_after"]
            wait_idle(url, pid, 2)

            before = status(url, pid)["job"]
            storm = webhook_storm(url, pid, [t["id"] for t in tasks], args.webhooks, args.storm_s)
            during = status(url, pid)["job"]
            after = wait_idle(url, pid, before["jobs_started"])["job"]
            requested = args.webhooks // args.retrain_every if args.retrain_every else 0
            storm.update(trainings_requested=requested, trainings_run=after["jobs_started"] - before["jobs_started"],
                         requests_coalesced=after["requests_coalesced"] - before["requests_coalesced"],
                         at_storm_end={k: during[k] for k in ("state", "pending")}, job_s=round(job_s, 1))
            # one job per request while none runs, else one waits: no more than the storm's length allows
            bound = 2 + math.ceil(storm["took_s"] / max(job_s, 1.0))
            storm["trainings_bound"] = min(requested, bound)
            print(f"webhook storm: {storm}", flush=True)
            checks["webhooks: no failures"] = storm["failures"] == 0
            checks["webhooks: each under 1 s"] = storm["over_1s"] == 0
            checks["webhooks: trainings coalesced"] = 0 < storm["trainings_run"] <= storm["trainings_bound"]
            checks["backend up"] = requests.get(f"{url}/health", timeout=10).status_code == 200
            rss_after, processes_after = tree_rss_mb(backend.pid)
        finally:
            backend.stop()
    summary = {"bench": "load", "tasks": args.tasks, "predict": burst, "webhooks": storm,
               "rss_mb": {"before": round(rss_before), "after": round(rss_after),
                          "processes_before": processes_before, "processes_after": processes_after},
               "checks": checks, "ok": all(checks.values())}
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(json.dumps(summary))
    write_result("load", "load", summary, argv)
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
