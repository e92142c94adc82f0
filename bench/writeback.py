"""Write-back throughput: the backend's own write path into a real local Label Studio.

    python -m bench.writeback [--tasks 10000]

Starts Label Studio (backend.tools.servers, throwaway SQLite data dir), imports N tasks into a 10-class image
classification project, then publishes a version of a small model through `backend.job.publication.Publication`
exactly as a training job does after scoring the pool: the version's files staged, its predictions
(`TaskType.predictions`) bulk-imported, meta.json, then the rename into place and the project's model_version +
"Uncertainty sampling". Times the prediction write and the whole publication. Prints tasks/s, the peak RSS of this
process during the write and its growth over the baseline (the stream is lazy, so it should stay flat), checks that
Label Studio kept every prediction, and ends with one line of JSON. Target: >= 500 tasks/s.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from backend.job.publication import Publication
from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.score_encoding import place_scores
from backend.storage.projects import ModelDir
from backend.tasktypes import parse_label_config
from backend.tools.demo import CIFAR_CLASSES, label_config
from backend.tools.servers import LabelStudioServer
from isal_core.influence.params import select_parameters
from isal_core.influence.scorer import InfluenceScorer
from isal_core.nets.models import build_model

from .common import PeakMemory, write_result


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    args = ap.parse_args(argv)

    with LabelStudioServer() as server, LabelStudioAPI(server.url, server.legacy_token, timeout=300) as api:
        config = label_config()
        task_type = parse_label_config(config)
        pid = api.create_project("bench writeback", config)
        t0 = time.perf_counter()
        task_ids: list[int] = []
        for start in range(0, args.tasks, 2000):
            n = min(2000, args.tasks - start)
            task_ids += api.import_tasks(pid, [{"image": f"/data/upload/{pid}/img_{start + i:06d}.jpg"}
                                               for i in range(n)])
        print(f"imported {len(task_ids)} tasks in {time.perf_counter() - t0:.1f} s")

        rng = np.random.default_rng(0)
        influences = rng.normal(0.0, 1e-3, len(task_ids))
        scores = place_scores(np.argsort(influences, kind="stable"), len(influences))
        outputs = rng.integers(0, len(CIFAR_CLASSES), len(task_ids)).tolist()
        model_dir = ModelDir(tempfile.mkdtemp(prefix="isal-bench-writeback-"))
        project_dir = model_dir.get(pid)
        project_dir.register(config, task_type)
        version = f"isal-{pid}-1-bench"
        model = build_model("small_cnn", len(CIFAR_CLASSES))
        names = [n for n, _ in select_parameters(model, "weights")]
        scorer = InfluenceScorer(torch.zeros(sum(p.numel() for _, p in select_parameters(model, "weights"))), names)
        meta = {"version": version, "job": 1, "score_encoding": "place", "params": "weights",
                "task_type": task_type.to_meta(), "top_k": 1, "arch": "small_cnn", "num_classes": len(CIFAR_CLASSES),
                "image_size": 32}
        baseline = rss_mb()
        with PeakMemory(torch.device("cpu")) as mem:
            start = time.perf_counter()
            with Publication(project_dir, api, version) as publication:
                publication.save(model, {"arch": "small_cnn", "num_classes": len(CIFAR_CLASSES)}, scorer, task_ids,
                                 influences, outputs, scores=scores)
                write_start = time.perf_counter()
                created = publication.write_predictions(task_type.predictions(version, task_ids, outputs, scores),
                                                         len(task_ids))
                seconds = time.perf_counter() - write_start
                publication.finish(meta)
            total = time.perf_counter() - start
        project = api.ls.projects.get(id=pid)
        kept = project.total_predictions_number
        rate = len(task_ids) / seconds
        print(f"wrote {created} predictions in {seconds:.1f} s: {rate:.0f} tasks/s; the whole publication "
              f"{total:.1f} s")
        print(f"peak RSS {mem.peak_mb:.0f} MB, baseline {baseline:.0f} MB, growth {mem.peak_mb - baseline:.1f} MB")
        print(f"Label Studio holds {kept} predictions; project model_version {project.model_version!r}, "
              f"sampling {project.sampling!r}")
        ok = created == kept == len(task_ids) and project.model_version == version
        summary = {"bench": "writeback", "tasks": len(task_ids), "seconds": round(seconds, 2),
                   "publication_seconds": round(total, 2), "tasks_per_s": round(rate, 1),
                   "peak_rss_mb": round(mem.peak_mb, 1),
                   "rss_growth_mb": round(mem.peak_mb - baseline, 1), "kept": kept, "target_tasks_per_s": 500,
                   "ok": bool(ok and rate >= 500)}
        print(json.dumps(summary))
        write_result("writeback", "writeback", summary, argv)
        return summary


if __name__ == "__main__":
    main()
