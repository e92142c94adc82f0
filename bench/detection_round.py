"""One detection job on BCCD, as the backend runs it: fit, s_test, influence of the pool, mAP@0.5.

    python -m bench.detection_round [--setups default,light,scratch] [--labeled 100] [--seed 0] [--split validation]

The same `--labeled` trainval photos (seeded) train FCOS under each setup:
- `default`: what the backend runs with no ISAL_* setting (the frozen, pretrained EfficientNet-Lite0
  body, its feature maps computed once per photo and kept; FPN and head learn);
- `wide`: the same body with the whole-network training defaults (4 tower convolutions, 256 channels,
  500 steps of 64 at 256/320 px: what a detection job ran before this setup had its own defaults);
- `light`: the same body with the detection CPU protocol's head (configs/bccd-cpu.json: 1 tower
  convolution, 64 channels, 200 steps of 8 at 192/256 px, lr 0.01);
- `scratch`: that protocol with today's FCOS before the packaged weights: a ResNet-18 from scratch;
- `head2x128`, `steps400`, `steps800`: the default with a wider head (2 convolutions, 128 channels)
  or 400 or 800 steps; `wide20`: `wide` for 20 steps only (its time per step, not its accuracy).
Then ISAL's s_test on 20 test photos (R) and the influence of every unlabeled trainval photo, and
mAP@0.5 on `--split`: `validation` (60 trainval photos held out of the pool: choose setups here) or
`test` (the test photos outside R). Prints the seconds of each part; target: a job on 100 photos in
<= 5 minutes on the project's 2-core CPU. Writes docs/results/bench/detection-round-<split>-<setups>[-seed<n>].json.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from isal_core.learner import Learner
from isal_core.settings import EngineSettings, read_protocol
from isal_core.simulation.config import load_config
from isal_core.simulation.dataset import SimulationData
from isal_core.tasks.detection import detection_adapter
from isal_core.tasks.detection_defaults import detection_settings

from .common import write_result

PROTOCOL = "configs/bccd-cpu.json"
LIGHT = {k: v for k, v in read_protocol(PROTOCOL).items()
         if k in ("min_size", "max_size", "head_convs", "fpn_channels", "epochs", "min_steps", "lr", "batch_size")}
WIDE = {"head_convs": 4, "fpn_channels": 256, "min_steps": 500, "batch_size": 64, "lr": 0.05, "epochs": 30,
        "min_size": 256, "max_size": 320}
SETUPS = {"default": {}, "wide": WIDE, "light": LIGHT, "scratch": {"arch": "resnet18", "weights": None, **LIGHT},
          "head2x128": {"head_convs": 2, "fpn_channels": 128}, "steps400": {"min_steps": 400},
          "steps800": {"min_steps": 800},
          "wide20": {**WIDE, "min_steps": 20, "epochs": 1}}
VALIDATION = 60


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="default,light,scratch")
    ap.add_argument("--labeled", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=("validation", "test"), default="validation")
    args = ap.parse_args(argv)
    config = load_config(PROTOCOL, progress=False)
    data = SimulationData.load(config)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed)).tolist()
    held = VALIDATION if args.split == "validation" else 0
    labeled = data.records("train", order[:args.labeled])
    pool = data.records("train", order[args.labeled:len(order) - held])
    evaluation = (data.records("train", order[len(order) - held:]) if held
                  else data.records("test", data.evaluation))
    reference = data.records("test", data.reference)
    out = {}
    for name in args.setups.split(","):
        settings = EngineSettings(**SETUPS[name])
        adapter = detection_adapter(settings, len(data.classes))
        learner = Learner(adapter, detection_settings(settings), args.seed)
        start = time.perf_counter()
        result = learner.round("isal", adapter.dataset(labeled), adapter.dataset(pool), adapter.dataset(reference))
        fitted = time.perf_counter()
        metric = learner.evaluate(result.model, adapter.dataset(evaluation))
        steps = detection_settings(settings)
        out[name] = {"job_s": round(fitted - start, 1), "evaluation_s": round(time.perf_counter() - fitted, 1),
                     "map_50": round(metric, 4), "labeled": len(labeled), "pool": len(pool),
                     "backbone": adapter.backbone, "head_convs": adapter.head_convs,
                     "fpn_channels": adapter.fpn_channels, "min_size": adapter.min_size,
                     "steps": steps.min_steps, "batch_size": steps.batch_size, "lr": steps.lr}
        print(name, json.dumps(out[name]), flush=True)
    summary = {"bench": "detection_round", "device": "cpu", "seed": args.seed, "split": args.split,
               "evaluated_photos": len(evaluation), "setups": out, "target_s": 300}
    name = f"detection-round-{args.split}-{args.setups.replace(',', '-')}" + (f"-seed{args.seed}" if args.seed else "")
    write_result(name, "detection_round", summary, argv)
    return summary


if __name__ == "__main__":
    main()
