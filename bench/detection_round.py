"""One detection round on BCCD, as a job runs it: fit, s_test, influence of the pool, mAP@0.5 on the test split.

    python -m bench.detection_round [--backbones efficientnet_lite0,resnet18] [--labeled 100] [--seed 0]

For each backbone, the same `--labeled` trainval photos (seeded) train FCOS with the detection
protocol's light head (configs/bccd-cpu.json: 1 tower convolution, 64 channels, 192/256 px, 200
SGD steps of 8 images, lr 0.01): `efficientnet_lite0` is the default's frozen, pretrained body
(its feature maps computed once per photo and kept), `resnet18` today's FCOS from scratch. Then
ISAL's s_test on 20 test photos (R) and the influence of every other trainval photo, and the mAP
on the remaining test photos. Prints and records the seconds of each part; target: a job on 100
photos in <= 5 minutes on the project's 2-core CPU. Writes docs/results/bench/detection-round.json.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from isal_core.learner import Learner
from isal_core.settings import EngineSettings
from isal_core.simulation.config import load_config
from isal_core.simulation.dataset import SimulationData
from isal_core.tasks.detection import detection_adapter, detection_settings

from .common import write_result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="efficientnet_lite0,resnet18")
    ap.add_argument("--labeled", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    config = load_config("configs/bccd-cpu.json", progress=False)
    data = SimulationData.load(config)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed)).tolist()
    labeled, pool = data.records("train", order[:args.labeled]), data.records("train", order[args.labeled:])
    reference, evaluation = data.records("test", data.reference), data.records("test", data.evaluation)
    out = {}
    for backbone in args.backbones.split(","):
        weights = None if backbone.startswith("resnet") else "DEFAULT"
        protocol = {k: getattr(config, k) for k in ("min_size", "max_size", "head_convs", "fpn_channels", "epochs",
                                                    "min_steps", "lr", "batch_size")}
        settings = EngineSettings(arch=backbone, weights=weights, **protocol)
        adapter = detection_adapter(settings, len(data.classes))
        learner = Learner(adapter, detection_settings(settings), args.seed)
        start = time.perf_counter()
        result = learner.round("isal", adapter.dataset(labeled), adapter.dataset(pool), adapter.dataset(reference))
        fitted = time.perf_counter()
        metric = learner.evaluate(result.model, adapter.dataset(evaluation))
        out[backbone] = {"round_s": round(fitted - start, 1), "evaluation_s": round(time.perf_counter() - fitted, 1),
                         "map_50": round(metric, 4), "labeled": len(labeled), "pool": len(pool)}
        print(backbone, json.dumps(out[backbone]), flush=True)
    summary = {"bench": "detection_round", "device": "cpu", "seed": args.seed, "backbones": out, "target_s": 300}
    write_result("detection-round", "detection_round", summary, argv)
    return summary


if __name__ == "__main__":
    main()
