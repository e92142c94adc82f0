"""Many annotators at once: Label Studio users each looping /next -> annotate while jobs retrain.

    python -m bench.annotators [--annotators 10] [--each 200] [--retrain-every 40] [--db sqlite|postgresql]
                               [--think-s 0.5]

A real local Label Studio (SQLite, or a throwaway PostgreSQL: backend/tools/postgres.py), the backend
under gunicorn as users run it (`python -m backend`: web and job worker) with its webhook, and a CIFAR-10
project. Each annotator is a Label Studio user of their own (signed up through Label Studio's form, using
their own token) who asks /next for a task, thinks `--think-s`, and submits the image's true label;
jobs run every `--retrain-every` annotations. Checked: no annotation lost (every submit is in Label
Studio) or duplicated (no task labeled twice), no served task already labeled, the served tasks carry
the served version's prediction (Label Studio's uncertainty sampling picks at random among the top
few: it serves from the backend's order), jobs coalesced (never more than one running and one waiting).
Reported: annotation latency p50/p99 (Label Studio sends the webhook within the submit, so it
includes the backend's answer), jobs run, and how many labels the serving version lagged behind.
`--no-backend`: Label Studio alone under the same load (no predictions: it serves at random), the
baseline the latencies compare with. Ends with one JSON line (docs/results/bench/annotators-<db>[-no-backend].json);
exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from backend.labelstudio.client import LabelStudioAPI
from backend.tools.demo import choice_result, make_cifar_project
from backend.tools.servers import BackendProcess

from .common import write_result
from .load import status, wait_idle
from .ls_lock import label_studio_on


def sign_up(url: str, email: str, password: str) -> str:
    """A new Label Studio user (its sign-up form, as a person would) in the server's organisation; their
    API token."""
    with requests.Session() as s:
        s.get(f"{url}/user/signup/", timeout=60)
        r = s.post(f"{url}/user/signup/", timeout=60, allow_redirects=False, headers={"Referer": f"{url}/user/signup/"},
                   data={"email": email, "password": password, "csrfmiddlewaretoken": s.cookies.get("csrftoken")})
        if r.status_code not in (302, 303):
            raise RuntimeError(f"sign-up of {email} failed: HTTP {r.status_code} {r.text[:300]}")
        return s.get(f"{url}/api/current-user/token", timeout=60).json()["token"]


def annotate(url: str, token: str, pid: int, labels: dict[int, str], each: int, think_s: float,
             submitted: list) -> dict:
    """One annotator: up to `each` rounds of /next, think, submit the true label (appended to `submitted`, which
    the annotators share). What they saw and how long each submit took. A /next that finds no task (404) is
    asked again a second later, up to 30 times in a row, as a person would click again."""
    served, latencies, errors, empty, in_a_row = [], [], [], 0, 0
    with requests.Session() as s:
        s.headers["Authorization"] = f"Token {token}"
        while len(served) < each and in_a_row < 30:
            r = s.get(f"{url}/api/projects/{pid}/next", timeout=120)
            if r.status_code == 404:  # no task for this user right now
                empty, in_a_row = empty + 1, in_a_row + 1
                time.sleep(1.0)
                continue
            in_a_row = 0
            if r.status_code != 200:
                errors.append(f"/next HTTP {r.status_code}: {r.text[:200]}")
                continue
            task = r.json()
            ours = [p for p in task.get("predictions") or [] if str(p.get("model_version")).startswith(f"isal-{pid}-")]
            served.append({"id": task["id"], "annotations_before": len(task.get("annotations") or []),
                           "versions": sorted({p.get("model_version") for p in ours}),
                           "score": max((p["score"] for p in ours if p.get("score") is not None), default=None)})
            time.sleep(think_s)
            t0 = time.perf_counter()
            r = s.post(f"{url}/api/tasks/{task['id']}/annotations/", timeout=120,
                       json={"result": choice_result(labels[task["id"]]), "lead_time": think_s})
            latencies.append(time.perf_counter() - t0)
            if r.status_code == 201:
                submitted.append(task["id"])
            else:
                errors.append(f"submit HTTP {r.status_code}: {r.text[:200]}")
    return {"served": served, "latencies": latencies, "errors": errors, "empty_next": empty}


def watch(backend_url: str, pid: int, labeled_now, stop: threading.Event, every_s: float = 1.0) -> list[dict]:
    """Samples of (annotators' labels so far, the serving version's train labels, job state) until `stop`."""
    samples = []
    while not stop.wait(every_s):
        with contextlib.suppress(requests.RequestException, ValueError, KeyError):
            st = status(backend_url, pid)
            samples.append({"labeled": labeled_now(), "version_labeled": (st.get("counts") or {}).get("labeled", 0),
                            "state": st["job"]["state"], "pending": st["job"]["pending"]})
    return samples


def session(ls_url: str, token: str, backend_url: str | None, pid: int, labels: dict[int, str],
            reference: list[int], annotators: int, each: int, think_s: float) -> dict:
    """`annotators` users labeling the project at once; the checks and figures (see the module's doc). No
    backend_url: Label Studio alone (the baseline of `--no-backend`), no job figures."""
    tokens = [sign_up(ls_url, f"annotator{i}-{secrets.token_hex(3)}@example.com", secrets.token_hex(12))
              for i in range(annotators)]
    jobs = (lambda: status(backend_url, pid)["job"]) if backend_url else (
        lambda: {"jobs_started": 0, "requests_coalesced": 0})
    before = jobs()
    done, submitted, stop = [], [], threading.Event()
    with ThreadPoolExecutor(annotators + 1) as pool:
        watcher = pool.submit(watch, backend_url, pid, lambda: len(submitted), stop) if backend_url else None
        t0 = time.perf_counter()
        runs = [pool.submit(annotate, ls_url, tok, pid, labels, each, think_s, submitted) for tok in tokens]
        for run in runs:
            done.append(run.result())
        seconds = time.perf_counter() - t0
        stop.set()
        samples = watcher.result() if watcher else []
    api = LabelStudioAPI(ls_url, token, timeout=120)
    stored = {t["id"]: len(t.get("annotations") or []) for t in api.tasks_with_annotations(pid)}
    served = [s for d in done for s in d["served"]]
    scores = [s["score"] for s in served if s["score"] is not None]
    latencies = [x for d in done for x in d["latencies"]]
    ours = [s for s in served if any(str(v).startswith(f"isal-{pid}-") for v in s["versions"])]
    after = jobs()
    lags = [s["labeled"] - s["version_labeled"] for s in samples]
    return {
        "annotators": annotators, "each": each, "think_s": think_s, "seconds": round(seconds, 1),
        "submitted": len(submitted), "errors": [e for d in done for e in d["errors"]][:5],
        "lost": sum(1 for tid in submitted if stored.get(tid, 0) < 1),
        "duplicated": sum(1 for tid in set(submitted) if stored.get(tid, 0) > 1) + len(submitted) - len(set(submitted)),
        "served_already_labeled": sum(1 for s in served if s["annotations_before"] or s["id"] in reference),
        "served_with_a_version_prediction": round(len(ours) / max(1, len(served)), 3),
        "served_score_median": round(float(np.median(scores)), 3) if scores else None,
        "empty_next": sum(d["empty_next"] for d in done),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
        "latency_p99_s": round(float(np.percentile(latencies, 99)), 3) if latencies else None,
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "jobs_run": after["jobs_started"] - before["jobs_started"],
        "requests_coalesced": after["requests_coalesced"] - before["requests_coalesced"],
        "most_jobs_waiting": max((int(bool(s["pending"])) for s in samples), default=0),
        "lag_labels_mean": round(float(np.mean(lags)), 1) if lags else None, "lag_labels_max": max(lags, default=None),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotators", type=int, default=10)
    ap.add_argument("--each", type=int, default=200)
    ap.add_argument("--retrain-every", type=int, default=40)
    ap.add_argument("--think-s", type=float, default=0.5)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    ap.add_argument("--no-backend", action="store_true", help="Label Studio alone under the same load: the baseline")
    args = ap.parse_args(argv)
    images = args.annotators * args.each * 11 // 10 + 100
    with tempfile.TemporaryDirectory() as tmp, label_studio_on(args.db) as server:
        api = LabelStudioAPI(server.url, server.legacy_token, timeout=120)
        project = make_cifar_project(api, server.files_root, images, reference_fraction=0.05, title="annotators")
        env = {"LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.legacy_token,
               "MODEL_DIR": str(Path(tmp) / "models"), "ISAL_RETRAIN_EVERY": str(args.retrain_every),
               "ISAL_SEED": "0", "LOG_LEVEL": "WARNING"}
        with contextlib.ExitStack() as stack:
            backend = None if args.no_backend else stack.enter_context(
                BackendProcess(env, log_path=Path(tmp) / "backend.log"))
            if backend:
                api.connect_ml_backend(project.id, backend.url)
                wait_idle(backend.url, project.id, 1)  # the cold start Label Studio's connecting asked for
            result = session(server.url, server.legacy_token, backend and backend.url, project.id, project.labels,
                             project.reference, args.annotators, args.each, args.think_s)
    checks = {"no annotation lost": result["lost"] == 0, "none duplicated": result["duplicated"] == 0,
              "no labeled task served": result["served_already_labeled"] == 0,
              "every submit accepted": result["submitted"] == args.annotators * args.each,
              "jobs coalesced": result["most_jobs_waiting"] <= 1}
    summary = {"bench": "annotators", "device": "cpu", "label_studio_db": args.db, "images": images, **result,
               "checks": checks, "ok": all(checks.values())}
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}))
    write_result(f"annotators-{args.db}" + ("-no-backend" if args.no_backend else ""), "annotators", summary, argv)
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
