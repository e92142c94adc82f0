"""Detection scoring throughput: FCOS inference vs ISAL influence on the head's three final convs.

    python -m bench.detection [--images 48] [--batch-size 8] [--min-size 256] [--max-size 320] [--device auto]

One model (FCOS, ResNet-18 FPN, eval mode), random RGB images of 480 x 640 px (BCCD's
size) resized by FCOS to --min-size/--max-size; both paths see the same images at the same
size and batch. Inference = torchvision's own forward with post-processing (what
predictions cost); scoring = the adapter's forward, pseudo-boxes, per-image loss and one
backward to the head (what ISAL adds). Each path runs once whole as a warm-up (its peak
memory is measured then), then `repeats` rounds time both, in alternating order; the ratio
(target >= 0.8) is reported as the median and range of the per-round ratios. Writes
docs/results/bench/detection-<device>.json.
"""
from __future__ import annotations

import argparse
import json

import torch
from torch.utils.data import DataLoader, Dataset

from isal_core.influence.params import select_parameters
from isal_core.influence.pool import influence
from isal_core.tasks.detection import HEAD_PARAMS, DetectionAdapter
from isal_core.utils.runtime import resolve_device

from .common import describe, interleaved, ratio_spread, timed, write_result


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
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds after the warm-up")
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

    peak = {}
    for name, fn in (("inference", inference), ("isal_head", scoring)):  # warm-up, whole: kernels, allocator
        _, seconds, peak[name] = timed(fn, device)
        print(f"warm-up {name:<10} {args.images / seconds:8.2f} images/s  peak {peak[name]:8.0f} MB")
    seconds = interleaved({"inference": inference, "isal_head": scoring}, args.repeats, device)
    rates = {name: [round(args.images / s, 3) for s in values] for name, values in seconds.items()}
    ratio = ratio_spread(rates["isal_head"], rates["inference"])
    print(f"inference {rates['inference']} images/s\nscoring   {rates['isal_head']} images/s")
    print(f"scoring / inference: median {ratio['median']:.2f} (range {ratio['min']:.2f} .. {ratio['max']:.2f}, "
          f"{ratio['rounds']} rounds; target >= 0.8)")
    summary = {"bench": "detection", "device": str(device), "images": args.images, "batch_size": args.batch_size,
               "min_size": args.min_size, "max_size": args.max_size, "repeats": args.repeats,
               "images_per_s": rates, "peak_mb": {k: round(v) for k, v in peak.items()}, "ratio": ratio}
    print(json.dumps(summary))
    write_result(f"detection-{device.type}", "detection", summary, argv)
    return summary


if __name__ == "__main__":
    main()
