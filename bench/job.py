"""One backend job in frozen-feature mode, from "Start training" to predictions written and the
project's version set, against a real local Label Studio.

    python -m bench.job [--tasks 5000] [--size 32] [--cluster-serving off|on]

A project of CIFAR-10 images (`--size 224` resizes them to 224 x 224 for a ResNet-18
backbone, `32` keeps them for a small CNN; random weights from a file made here: the cost
does not depend on what the weights learned), 5 % flagged as reference and 100 labeled.
Job 1 computes every embedding; job 2 finds them in the cache. Prints each job's seconds
and the job's own phase timings, and ends with one line of JSON. Target: <= 15 s per job
after the first embedding pass.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from backend.web.app import create_app
from backend.tools.demo import choice_result, extract_cifar, label_config
from backend.tools.servers import LabelStudioServer
from backend.settings import EngineSettings, Settings
from isal_core.nets.models import build_model

BACKBONES = {32: "small_cnn", 224: "resnet18"}


def project(server: LabelStudioServer, tasks: int) -> int:
    """A project of `tasks` images: 5 % reference and 100 train images annotated at import."""
    sub = "bench-job"
    n_ref = max(1, tasks // 20)
    images = extract_cifar(server.files_root / sub, sub, tasks - n_ref, n_ref)
    ls = server.client()
    pid = ls.projects.create(title="bench job", label_config=label_config()).id
    ls.import_storage.local.create(project=pid, path=str(server.files_root / sub), title=sub)
    data, labeled = [], 0
    for im in images:
        task = {"data": {"image": f"/data/local-files/?d={im.rel}", "isal_reference": im.split == "test"}}
        if im.split == "test" or labeled < 100:
            labeled += im.split == "train"
            task["annotations"] = [{"result": choice_result(im.label)}]
        data.append(task)
    for start in range(0, len(data), 2000):
        ls.projects.import_tasks(id=pid, request=data[start:start + 2000])
    return pid


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--size", type=int, choices=sorted(BACKBONES), default=32)
    ap.add_argument("--cluster-serving", choices=["off", "on"], default="off")
    args = ap.parse_args(argv)
    arch = BACKBONES[args.size]
    with tempfile.TemporaryDirectory() as tmp, LabelStudioServer() as server:
        weights = Path(tmp) / f"{arch}.pt"
        torch.save(build_model(arch, 10).state_dict(), weights)
        pid = project(server, args.tasks)
        engine = EngineSettings(arch=arch, weights=str(weights), image_size=args.size, retrain_every=0,
                                cluster_serving=args.cluster_serving, damping=0.1)
        app = create_app(Settings(model_dir=str(Path(tmp) / "models"), label_studio_url=server.url,
                                  label_studio_api_key=server.legacy_token, engine=engine))
        c = app.test_client()
        c.post("/setup", json={"project": f"{pid}.0", "schema": label_config()})
        jobs = []
        for n in (1, 2):
            start = time.perf_counter()
            c.post("/train", json={"project": f"{pid}.0"})
            assert app.extensions["isal"].jobs.wait_idle(pid, 3600)
            seconds = time.perf_counter() - start
            last = c.get(f"/status?project={pid}").json["job"]["last_job"]
            assert last["status"] == "done", last
            jobs.append({"seconds": round(seconds, 1), "timings_s": last["timings_s"],
                         "embedding_cache": last["embedding_cache"], "predictions": last["predictions_written"]})
            print(f"job {n}: {seconds:.1f} s {last['timings_s']} embeddings {last['embedding_cache']}", flush=True)
    summary = {"bench": "job", "tasks": args.tasks, "size": args.size, "arch": arch,
               "cluster_serving": args.cluster_serving, "first_job_s": jobs[0]["seconds"],
               "second_job_s": jobs[1]["seconds"], "jobs": jobs, "target_s": 15,
               "ok": jobs[1]["seconds"] <= 15}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
