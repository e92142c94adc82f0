"""One backend job in frozen-feature mode, from "Start training" to predictions written and the
project's version set, against a real local Label Studio.

    python -m bench.job [--tasks 5000] [--backbone default|small_cnn] [--jobs 3] [--keep DIR]
                        [--predictions-per-version N] [--learner auto|supervised|semi]

`default` (the default): the backend with nothing set, as a user gets it: frozen EfficientNet-Lite0
features of the packaged ImageNet weights (nothing downloaded), ISAL_STRATEGY=auto (TypiClust on
frozen features), the review of the labeled tasks (s_test, and heads refit on folds for the
cross-fitted loss). `small_cnn`: the small CNN backbone of the earlier stand-in protocol at 32 px
(random weights from a file), isal_batch served by cluster. A project of CIFAR-10
images, 5 % flagged as reference and 100 labeled. Job 1 computes every embedding; jobs 2
and 3 find them in the cache, and job 3 also deletes job 1's predictions (KEEP_LS_VERSIONS=2),
as every later job of a project does. Prints each job's seconds (and when its version began to
serve: before Label Studio deletes the old predictions, one by one), its phase timings (read,
download, score of which review, write) and each phase's seconds; writes
docs/results/bench/job-<backbone>-<tasks>.json. `--keep DIR` keeps the backbone's weights file
and the embedding cache in DIR, so a rerun's job 1 finds its embeddings too (for profiling the
later jobs without the first pass; recorded in the result).
Target: <= 15 s at 5,000 tasks and <= 150 s at 50,000 for a job after the first embedding pass.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from backend.settings import EngineSettings, Settings
from backend.tools.demo import choice_result, extract_cifar, label_config
from backend.tools.servers import LabelStudioServer
from backend.web.app import create_app
from isal_core.nets.models import build_model

from .common import write_result


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
    ap.add_argument("--backbone", choices=["default", "small_cnn"], default="default")
    ap.add_argument("--jobs", type=int, default=3, help="jobs in a row (>= 2); from the third on, each deletes "
                    "the predictions of the version before last (KEEP_LS_VERSIONS=2), as a project's steady state")
    ap.add_argument("--keep", type=Path, help="a folder for the weights and the embedding cache, kept between runs")
    ap.add_argument("--learner", choices=["auto", "supervised", "semi"], default="auto",
                    help="ISAL_LEARNER (auto: semi on frozen features): semi builds the kNN graph of the pool and "
                         "refits the head")
    ap.add_argument("--predictions-per-version", type=int,
                    default=Settings.model_fields["ls_predictions_per_version"].default,
                    help="LS_PREDICTIONS_PER_VERSION (0 = every task, as before it existed)")
    args = ap.parse_args(argv)
    if args.jobs < 2:
        ap.error("--jobs: at least 2 (the target is on the jobs after the first)")
    for key in [k for k in os.environ if k.startswith("ISAL_")]:
        del os.environ[key]  # the backend as a user who sets nothing gets it
    with tempfile.TemporaryDirectory() as tmp, LabelStudioServer() as server:
        os.environ["TORCH_HOME"] = str(Path(tmp) / "torch")
        keep = args.keep or Path(tmp)
        keep.mkdir(parents=True, exist_ok=True)
        warm = (keep / "embeddings").is_dir()
        if args.backbone == "default":
            engine = EngineSettings(cold_start="off", embedding_cache=str(keep / "embeddings"), learner=args.learner)
        else:
            weights = keep / "small_cnn.pt"
            if not weights.is_file():
                torch.save(build_model("small_cnn", 10).state_dict(), weights)
            engine = EngineSettings(arch="small_cnn", weights=str(weights), cold_start="off", damping=0.1,
                                    strategy="isal_batch", embedding_cache=str(keep / "embeddings"))
        pid = project(server, args.tasks)
        app = create_app(Settings(model_dir=str(Path(tmp) / "models"), label_studio_url=server.url,
                                  label_studio_api_key=server.legacy_token, engine=engine,
                                  ls_predictions_per_version=args.predictions_per_version))
        c = app.test_client()
        c.post("/setup", json={"project": f"{pid}.0", "schema": label_config()})
        jobs = []
        for n in range(1, args.jobs + 1):
            start = time.perf_counter()
            c.post("/train", json={"project": f"{pid}.0"})
            assert app.extensions["isal"].jobs.wait_idle(pid, 3600)
            seconds = time.perf_counter() - start
            last = c.get(f"/status?project={pid}").json["job"]["last_job"]
            assert last["status"] == "done", last
            cleanup = last["phases_s"].get("deleting old predictions", 0.0)  # after the new version serves
            jobs.append({"seconds": round(seconds, 1), "serving_after_s": round(seconds - cleanup, 1),
                         "timings_s": last["timings_s"], "phases_s": last["phases_s"],
                         "embedding_cache": last["embedding_cache"], "predictions": last["predictions_written"],
                         "label_studio_versions_pruned": last.get("label_studio_versions_pruned")})
            print(f"job {n}: {seconds:.1f} s {last['timings_s']} phases {last['phases_s']} embeddings "
                  f"{last['embedding_cache']}", flush=True)
    target = 15 * max(1, args.tasks // 5000)
    later, serving = [j["seconds"] for j in jobs[1:]], [j["serving_after_s"] for j in jobs[1:]]
    summary = {"bench": "job", "device": "cpu", "tasks": args.tasks, "backbone": args.backbone,
               "predictions_per_version": args.predictions_per_version, "learner": engine.learner,
               "strategy": engine.strategy, "embedding_cache_warm_at_start": warm, "first_job_s": jobs[0]["seconds"],
               "later_jobs_s": later, "later_jobs_serving_after_s": serving, "jobs": jobs, "target_s": target,
               "ok": max(later) <= target, "ok_serving": max(serving) <= target}
    print(json.dumps(summary))
    every = "" if args.predictions_per_version else "-every-prediction"
    learner = "" if args.learner == "auto" else f"-{args.learner}"
    write_result(f"job-{args.backbone}-{args.tasks}{every}{learner}", "job", summary, argv)
    return summary


if __name__ == "__main__":
    main()
