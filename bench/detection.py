"""Detection scoring throughput: FCOS inference vs ISAL influence on the head's three final convs.

    python -m bench.detection [--images 48] [--batch-size 8] [--min-size 256] [--max-size 320] [--device auto]

One run, one model (FCOS, ResNet-18 FPN, eval mode), random RGB images of 480 x 640 px
(BCCD's size) resized by FCOS to --min-size/--max-size; both paths see the same images
at the same size and batch. Inference = torchvision's own forward with post-processing
(what predictions cost); scoring = the adapter's forward, pseudo-boxes, per-image loss
and one backward to the head (what ISAL adds). Prints images/s, the ratio (target >= 0.8)
and peak memory, then one line of JSON.
"""
from __future__ import annotations

import argparse
import json

import torch
from torch.utils.data import DataLoader, Dataset

from isal_core.detection import HEAD_PARAMS, DetectionAdapter
from isal_core.params import select_parameters
from isal_core.runtime import resolve_device
from isal_core.scoring import influence

from .common import describe, timed


class RandomImages(Dataset):
    def __init__(self, n: int, height: int = 480, width: int = 640):
        self.x = torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], None, i


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--min-size", type=int, default=256)
    ap.add_argument("--max-size", type=int, default=320)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    torch.manual_seed(0)
    adapter = DetectionAdapter(3, args.backbone, args.min_size, args.max_size, score_threshold=0.05)
    model = adapter.build_model().to(device).eval()
    params = select_parameters(model, HEAD_PARAMS)
    s_test = torch.randn(sum(p.numel() for _, p in params), device=device) * 1e-3
    loader = DataLoader(RandomImages(args.images), batch_size=args.batch_size, collate_fn=adapter.collate_fn)
    print(describe(device), f"| FCOS {args.backbone}-FPN, {args.images} images 480x640 -> "
                            f"{args.min_size}/{args.max_size}, batch {args.batch_size}, "
                            f"{sum(p.numel() for _, p in params)} head parameters")

    def inference():
        with torch.no_grad():
            for images, _, _ in loader:
                model([x.to(device) for x in images])

    def scoring():
        return influence(model, adapter, loader, s_test, params, device=device)

    inference()  # warm-up (allocator, kernels)
    results = {}
    for name, fn in (("inference", inference), ("isal_head", scoring)):
        _, seconds, peak = timed(fn, device)
        results[name] = {"images_per_s": args.images / seconds, "seconds": seconds, "peak_mb": peak}
        print(f"{name:<10} {args.images / seconds:8.2f} images/s  {seconds:7.2f} s  peak {peak:8.0f} MB")
    ratio = results["isal_head"]["images_per_s"] / results["inference"]["images_per_s"]
    print(f"scoring / inference = {ratio:.2f} (target >= 0.8)")
    summary = {"bench": "detection", "device": str(device), "images": args.images, "batch_size": args.batch_size,
               "min_size": args.min_size, "max_size": args.max_size, **results, "ratio": ratio}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
