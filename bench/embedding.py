"""First-pass embedding at 224 px: what a frozen-feature job does with a new image, against a plain forward pass.

    python -m bench.embedding [--images 640] [--batch-size 64] [--repeats 3]

Two paths over the same CIFAR-10 training images (the shared zip, else torchvision's download):
- `first_pass`: the frozen adapter's `dataset()` on images not in its cache (a fresh cache each
  round): read, decode, resize to 256 and crop 224, EfficientNet-Lite0 with BatchNorm folded in
  channels-last memory, each embedding written to the cache (what a job's first pass costs);
- `plain_forward`: the plain network (BatchNorm as trained, contiguous memory) on the same images,
  already decoded and preprocessed into one tensor: the forward pass alone, no input pipeline.
Timed interleaved (isal_core's bench.common), after a warm-up of each. Prints images/s of each
and their ratio; target: the first pass >= 40 images/s on the project's 2-core CPU. Writes
docs/results/bench/embedding-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch

from isal_core.data.cifar10 import cifar10_root
from isal_core.data.images import ImageDataset, load_records
from isal_core.nets.backbones import load_weights
from isal_core.nets.models import build_model
from isal_core.settings import EngineSettings
from isal_core.tasks.frozen import EmbeddingCache, classification_adapter
from isal_core.utils.runtime import resolve_device

from .common import describe, interleaved, ratio_spread, write_result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    _, records = load_records(f"{cifar10_root()}/train")
    records = records[:args.images]
    settings = EngineSettings(device=str(device), batch_size=args.batch_size)
    adapter = classification_adapter(settings, 10, device, args.batch_size)
    weights = load_weights(settings.arch, settings.weights)
    plain = build_model(settings.arch, 1000)
    plain.load_state_dict(weights.state_dict)
    plain = plain.to(device).eval()
    pixels = torch.stack([x for x, _, _ in ImageDataset(records, adapter.transform())])

    def first_pass():
        with tempfile.TemporaryDirectory() as tmp:
            adapter.cache = EmbeddingCache(tmp)  # nothing cached: every image is new
            return adapter.dataset(records).x

    def plain_forward():
        with torch.no_grad():
            return torch.cat([plain.embed(part.to(device)).cpu() for part in pixels.split(args.batch_size)])

    fast, slow = first_pass(), plain_forward()  # warm-up, and the check that both compute the same thing
    assert (fast.float() - slow).abs().max() < 1e-3, "the first pass does not embed as the plain network"
    seconds = interleaved({"first_pass": first_pass, "plain_forward": plain_forward}, args.repeats, device)
    rate = {name: round(args.images / min(s), 1) for name, s in seconds.items()}
    summary = {"bench": "embedding", "device": device.type, "arch": settings.arch, "images": args.images,
               "batch_size": args.batch_size, "images_per_second": rate,
               "first_pass_over_plain_forward": ratio_spread(seconds["plain_forward"], seconds["first_pass"]),
               "target_images_per_second": 40, "threads": torch.get_num_threads()}
    print(describe(device), json.dumps(summary))
    write_result(f"embedding-{device.type}", "embedding", summary, argv)
    return summary


if __name__ == "__main__":
    main()
