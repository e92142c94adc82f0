"""Scaling: pool scoring with 1 and 2 processes (torchrun), and what a web request waits while a job runs.

    python -m bench.scale [--pool 4096] [--device cpu|cuda] [--skip-web]

1. Scoring: small CNN, a random pool of 32x32 images, one s_test; `Learner.score` timed in
   one process with 1 thread and with 2 threads, and under torchrun with 2 processes of
   1 thread each (gloo; each scores half the pool, rank 0 gathers). On a GPU machine:
   1 process on the GPU.
2. Web: a real local Label Studio, the backend under gunicorn, a job running; GET /health
   and POST /predict (50 stored tasks) latencies during the job, with the job in the web
   process (JOB_RUNNER=web) and in the job worker (JOB_RUNNER=worker, the default).
Prints the figures and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def probe(pool_size: int, device: str, out: str) -> None:
    """One torchrun rank (or the only process): score the pool, rank 0 writes the seconds."""
    import torch
    import torch.distributed as dist

    from isal_core.data.images import TensorDataset3
    from isal_core.influence.params import select_parameters
    from isal_core.influence.scorer import InfluenceScorer
    from isal_core.learner import Learner
    from isal_core.settings import EngineSettings
    from isal_core.tasks.frozen import classification_adapter
    from isal_core.utils import distributed

    distributed.init_from_env(device)
    settings = EngineSettings(arch="small_cnn", batch_size=128, device=device, params="weights")
    adapter = classification_adapter(settings, 10, device, 128)
    learner = Learner(adapter, settings, seed=0)
    torch.manual_seed(0)
    model = adapter.build_model().to(learner.device).eval()
    n = sum(p.numel() for _, p in select_parameters(model, "weights"))
    scorer = InfluenceScorer(torch.randn(n, generator=torch.Generator().manual_seed(1)), "weights")
    pool = TensorDataset3(torch.randn(pool_size, 3, 32, 32), torch.full((pool_size,), -1))
    learner.score(scorer, model, TensorDataset3(pool.x[:256], pool.y[:256]))  # warm-up
    if dist.is_initialized():
        dist.barrier()
    t0 = time.perf_counter()
    scores = learner.score(scorer, model, pool)
    seconds = time.perf_counter() - t0
    if learner.main_process:
        assert scores is not None and len(scores.influence) == pool_size
        Path(out).write_text(json.dumps({"seconds": seconds, "images_per_s": pool_size / seconds}))


def run_probe(pool: int, device: str, processes: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = [str(Path(__file__).resolve()), "--probe", "--pool", str(pool), "--device", device, "--out", str(out)]
        cmd = [sys.executable, *args] if processes == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *args]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=3600)
        return {"processes": processes, "threads_each": threads, **json.loads(out.read_text())}


def web_wait(runner: str, tasks: int = 600, calls: int = 40) -> dict:
    """/health and /predict latencies while a training job runs, with jobs run by `runner`."""
    import requests

    from backend.tools.demo import label_config
    from backend.tools.servers import BackendProcess, LabelStudioServer
    from bench.job import project
    from bench.load import percentile, status, wait_idle

    with tempfile.TemporaryDirectory() as tmp, LabelStudioServer() as server:
        pid = project(server, tasks)
        env = {"LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.legacy_token, "JOB_RUNNER": runner,
               "MODEL_DIR": str(Path(tmp) / "m"), "ISAL_RETRAIN_EVERY": "0", "LOG_LEVEL": "WARNING"}
        backend = BackendProcess(env, log_path=Path(tmp) / "backend.log").start()
        try:
            url = backend.url
            requests.post(f"{url}/setup", json={"project": str(pid), "schema": label_config()}, timeout=30)
            requests.post(f"{url}/train", json={"project": str(pid)}, timeout=30)
            wait_idle(url, pid, 1)
            stored = [{"id": t.id, "data": t.data} for t in server.client().tasks.list(project=pid, page_size=100)
                      if not t.annotations][:50]
            requests.post(f"{url}/train", json={"project": str(pid)}, timeout=30)
            while status(url, pid)["job"]["phase"] != "training":
                time.sleep(0.05)
            health, predict = [], []
            for _ in range(calls):
                t0 = time.perf_counter()
                requests.get(f"{url}/health", timeout=60)
                health.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                r = requests.post(f"{url}/predict", json={"tasks": stored, "project": f"{pid}.1"}, timeout=60)
                predict.append(time.perf_counter() - t0)
                assert r.status_code == 200
            during = status(url, pid)["job"]["state"] == "running"
            wait_idle(url, pid, 2)
        finally:
            backend.stop()
    return {"job_runner": runner, "job_running_throughout": during,
            "health_p50_s": round(percentile(health, 50), 4), "health_p99_s": round(percentile(health, 99), 4),
            "predict_p50_s": round(percentile(predict, 50), 4), "predict_p99_s": round(percentile(predict, 99), 4)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-web", action="store_true")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        probe(args.pool, args.device, args.out)
        return {}
    runs = [run_probe(args.pool, args.device, 1, 1), run_probe(args.pool, args.device, 1, 2),
            run_probe(args.pool, args.device, 2, 1)]
    for r in runs:
        print(f"scoring, {r['processes']} process(es) x {r['threads_each']} thread(s): "
              f"{r['images_per_s']:.1f} images/s ({r['seconds']:.1f} s)", flush=True)
    summary = {"bench": "scale", "device": args.device, "pool": args.pool, "scoring": runs,
               "ratio_2proc_vs_1proc_1thread": round(runs[2]["images_per_s"] / runs[0]["images_per_s"], 2),
               "ratio_2proc_vs_1proc_2threads": round(runs[2]["images_per_s"] / runs[1]["images_per_s"], 2)}
    if not args.skip_web:
        summary["web_during_job"] = [web_wait("web"), web_wait("worker")]
        for w in summary["web_during_job"]:
            print(f"during a job, JOB_RUNNER={w['job_runner']}: /health p50 {w['health_p50_s']} s, p99 "
                  f"{w['health_p99_s']} s; /predict p50 {w['predict_p50_s']} s, p99 {w['predict_p99_s']} s", flush=True)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
