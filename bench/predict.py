"""/predict on many tasks against Label Studio's 100 s limit: stored scores, and new tasks.

    python -m bench.predict [--tasks 5000] [--budget 60]

A model version (small CNN, the job's stored scores for `--tasks` task ids) is written the
way a job writes it; then one /predict of all those tasks (answered from stored scores),
and one of as many new tasks whose images a local file server hosts (scored within
PREDICT_BUDGET_S, the rest deferred). Prints seconds and counts, then one line of JSON.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.job.publication import Publication
from backend.labelstudio.score_encoding import place_scores
from backend.settings import EngineSettings, Settings
from backend.storage.projects import ModelDir
from backend.tasktypes import classification_config, parse_label_config
from backend.web.app import create_app
from isal_core.influence.params import select_parameters
from isal_core.influence.scorer import InfluenceScorer
from isal_core.nets.models import build_model

PROJECT = 7
LIMIT_S = 100.0  # Label Studio's /predict timeout


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def publish(model_dir: Path, n: int) -> None:
    project = ModelDir(model_dir).get(PROJECT)
    config = classification_config(["cat", "dog"])
    task_type = parse_label_config(config)
    project.register(config, task_type)
    model = build_model("small_cnn", 2)
    params = select_parameters(model, "weights")
    s_test = torch.randn(sum(p.numel() for _, p in params)) * 1e-3
    influences = np.random.default_rng(0).normal(size=n)
    job = project.next_job_number()
    meta = {"version": f"isal-{PROJECT}-{job}-bench", "job": job, "task_type": task_type.to_meta(),
            "params": "weights", "top_k": 1, "arch": "small_cnn", "num_classes": 2, "image_size": 32,
            "counts": {}, "reference_source": "isal_reference", "top_task": 1}
    with Publication(project, None, meta["version"]) as publication:  # on disk only
        publication.save(model, {"arch": "small_cnn", "num_classes": 2}, InfluenceScorer(
            s_test, [n_ for n_, _ in params]), list(range(1, n + 1)), influences.tolist(), [0] * n,
            scores=place_scores(np.argsort(influences, kind="stable"), n))
        publication.finish(meta)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--budget", type=float, default=60.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "www").mkdir()
        for i in range(args.tasks):
            Image.new("RGB", (32, 32), (i % 256, 80, 160)).save(root / "www" / f"{i}.png")
        handler = functools.partial(QuietFiles, directory=str(root / "www"))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        publish(root / "models", args.tasks)
        settings = Settings(model_dir=str(root / "models"), label_studio_url="http://127.0.0.1:9",
                            label_studio_api_key="0" * 40, download_allowed_hosts=url.split("//")[1],
                            predict_budget_s=args.budget, engine=EngineSettings())
        client = create_app(settings).test_client()
        out = {"bench": "predict", "tasks": args.tasks, "budget_s": args.budget, "limit_s": LIMIT_S}
        for name, tasks in (
            ("stored", [{"id": i, "data": {"image": f"/data/upload/{PROJECT}/{i}.png"}}
                        for i in range(1, args.tasks + 1)]),
            ("new", [{"id": 10**6 + i, "data": {"image": f"{url}/{i}.png"}} for i in range(args.tasks)]),
        ):
            start = time.perf_counter()
            results = client.post("/predict", json={"project": f"{PROJECT}.0", "tasks": tasks}).json["results"]
            seconds = time.perf_counter() - start
            deferred = sum("deferred" in r for r in results)
            scored = sum("deferred" not in r and "error" not in r for r in results)
            out[name] = {"seconds": round(seconds, 2), "scored": scored, "deferred": deferred,
                         "within_limit": seconds < LIMIT_S}
            print(f"{name:>6}: {len(results)} answers in {seconds:6.1f} s (scored {scored}, deferred {deferred})")
        server.shutdown()
    out["ok"] = out["stored"]["within_limit"] and out["new"]["within_limit"]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
