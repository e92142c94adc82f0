"""Which pretrained backbone by default: how fast each candidate embeds images on this machine.

    python -m bench.backbones [--images 64] [--batch-size 32] [--repeats 3] [--device auto]

Frozen features cost one forward pass of the backbone per image, once; every job after
that trains a head on the cached embeddings. So the default backbone is a trade of that
rate against the quality of its features. The rate is measured here (random weights: the
speed does not depend on them), at each weights' own preprocessing size, after a warm-up,
in alternating order over `repeats` rounds (the median). The quality cannot be measured on
this machine, which reaches no weight download: the table quotes torchvision's own ImageNet
figures from each weights' metadata (acc@1, GFLOPS, the file and its size). Writes
docs/results/bench/backbones-<device>.json.
"""
from __future__ import annotations

import argparse
import json

import torch
import torchvision

from isal_core.utils.runtime import resolve_device

from .common import describe, interleaved, write_result

CANDIDATES = {"resnet18": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V2", "convnext_tiny": "IMAGENET1K_V1",
              "efficientnet_b0": "IMAGENET1K_V1", "mobilenet_v3_large": "IMAGENET1K_V2",
              "regnet_y_800mf": "IMAGENET1K_V2"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    print(describe(device), f"| {args.images} images per pass, batch {args.batch_size}")
    passes, facts = {}, {}
    for arch, name in CANDIDATES.items():
        weights = torchvision.models.get_model_weights(arch)[name]
        size = int(weights.transforms().crop_size[0])
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch).to(device).eval()
        images = torch.rand(args.images, 3, size, size)

        def embed(model=model, images=images):
            with torch.no_grad():
                for batch in images.split(args.batch_size):
                    model(batch.to(device))

        embed()  # warm-up
        passes[arch] = embed
        meta = weights.meta
        facts[arch] = {"weights": f"{type(weights).__name__}.{name}", "file": weights.url.rsplit("/", 1)[-1],
                       "size": size, "imagenet_acc1": meta["_metrics"]["ImageNet-1K"]["acc@1"],
                       "gflops": meta.get("_ops"), "params_m": round(meta["num_params"] / 1e6, 1),
                       "file_mb": meta.get("_file_size")}
    seconds = interleaved(passes, args.repeats, device)
    for arch, values in seconds.items():
        rates = sorted(args.images / s for s in values)
        facts[arch]["images_per_s"] = round(rates[len(rates) // 2], 1)
        facts[arch]["images_per_s_range"] = [round(rates[0], 1), round(rates[-1], 1)]
        f = facts[arch]
        print(f"{arch:<20} {f['images_per_s']:7.1f} images/s ({f['images_per_s_range'][0]} .. "
              f"{f['images_per_s_range'][1]})  ImageNet acc@1 {f['imagenet_acc1']:5.2f}  {f['gflops']} GFLOPS  "
              f"{f['file_mb']} MB ({f['file']})")
    summary = {"bench": "backbones", "device": str(device), "images": args.images, "repeats": args.repeats,
               "backbones": facts}
    print(json.dumps(summary))
    write_result(f"backbones-{device.type}", "backbones", summary, argv)
    return summary


if __name__ == "__main__":
    main()
