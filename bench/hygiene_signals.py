"""What near-duplicates and outliers look like in the default embedding: the measurement issue 36's thresholds need.

    python -m bench.hygiene_signals [--images 1000] [--copies 100] [--outliers 40]

Frozen EfficientNet-Lite0 embeddings (the backend's default, L2-normalised) of `--images` CIFAR-10 training
images, of `--copies` near-duplicates of some of them (a horizontal flip, a crop of 28 px resized back,
JPEG re-compression at quality 30: one each), and of `--outliers` images from elsewhere (uniform noise,
blank frames of one colour, BCCD blood-cell photos when ../shared/data/bccd-voc.zip exists). Prints the
cosine similarity of each copy to its source beside each original's nearest *other* original, and the
distance to the 10th nearest neighbour of outliers beside originals, as quantiles; and for each cosine
threshold, the copies it finds and the distinct pairs it would merge. Nothing here is tuned on the images
a simulation evaluates on (these are training images). Writes docs/results/bench/hygiene-signals.json.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from isal_core.data.cifar10 import cifar10_root
from isal_core.data.images import ImageRecord, load_records, open_image
from isal_core.settings import EngineSettings
from isal_core.tasks.frozen import EmbeddingCache, classification_adapter

from .common import write_result

BCCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd-voc.zip"


def copies(image: Image.Image) -> dict[str, Image.Image]:
    """The near-duplicates a dataset picks up: mirrored, cropped and resized, re-compressed."""
    w, h = image.size
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=30)
    return {"flip": image.transpose(Image.FLIP_LEFT_RIGHT),
            "crop": image.crop((2, 2, w - 2, h - 2)).resize((w, h)),
            "jpeg30": Image.open(io.BytesIO(buf.getvalue())).convert("RGB")}


def strangers(n: int, rng: random.Random) -> list[tuple[str, Image.Image]]:
    """Images of no CIFAR-10 class: noise, blank frames, blood-cell photos."""
    out = [("noise", Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)))
           for i in range(n // 3)]
    out += [("blank", Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3)))) for _ in range(n // 3)]
    if BCCD.is_file():
        with zipfile.ZipFile(BCCD) as z:
            photos = sorted(m for m in z.namelist() if m.lower().endswith(".jpg"))
            for m in rng.sample(photos, min(n - len(out), len(photos))):
                out.append(("bccd", Image.open(io.BytesIO(z.read(m))).convert("RGB")))
    return out


def quantiles(values) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {f"q{q}": round(float(np.percentile(v, q)), 4) for q in (0, 1, 5, 50, 95, 99, 100)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--copies", type=int, default=100)
    ap.add_argument("--outliers", type=int, default=40)
    args = ap.parse_args(argv)
    rng = random.Random(0)
    _, records = load_records(f"{cifar10_root()}/train")
    originals = rng.sample(records, args.images)
    with tempfile.TemporaryDirectory() as tmp:
        made, kinds, sources = [], [], []
        for i, rec in enumerate(originals[:args.copies]):
            for kind, im in copies(open_image(rec.path).convert("RGB")).items():
                path = Path(tmp) / f"copy-{i}-{kind}.png"
                im.save(path)
                made.append(ImageRecord(path.name, str(path), 0))
                kinds.append(kind)
                sources.append(i)
        for j, (kind, im) in enumerate(strangers(args.outliers, rng)):
            path = Path(tmp) / f"out-{j}-{kind}.png"
            im.save(path)
            made.append(ImageRecord(path.name, str(path), 0))
            kinds.append(kind)
            sources.append(-1)
        settings = EngineSettings(device="cpu")
        adapter = classification_adapter(settings, 10, torch.device("cpu"), 64)
        adapter.cache = EmbeddingCache(Path(tmp) / "cache")
        x = torch.nn.functional.normalize(adapter.dataset(originals + made).x.float(), dim=1)
    n = len(originals)
    sim = x @ x.T
    sim.fill_diagonal_(-2)
    nearest_other = sim[:n, :n].max(dim=1).values  # each original's nearest distinct original
    copy_rows = [k for k in range(len(made)) if sources[k] >= 0]
    to_source = torch.stack([sim[n + k, sources[k]] for k in copy_rows])
    kth = (1 - sim[:, :n].topk(10, dim=1).values[:, -1])  # distance to the 10th nearest original
    report = {
        "embedding": f"{settings.arch} ({settings.weights}), L2-normalised", "originals": n,
        "copy_to_source_cosine": {kind: quantiles([float(to_source[i]) for i, k in enumerate(copy_rows)
                                                   if kinds[k] == kind]) for kind in ("flip", "crop", "jpeg30")},
        "nearest_other_original_cosine": quantiles(nearest_other.tolist()),
        "knn10_distance": {"originals": quantiles(kth[:n].tolist()),
                           **{kind: quantiles([float(kth[n + k]) for k in range(len(made)) if kinds[k] == kind])
                              for kind in sorted({kinds[k] for k in range(len(made)) if sources[k] < 0})}},
        "by_threshold": {f"{t:.2f}": {"copies_found": round(float((to_source >= t).float().mean()), 3),
                                      "distinct_pairs_merged": int((sim[:n, :n] >= t).sum()) // 2}
                         for t in (0.80, 0.85, 0.90, 0.92, 0.94, 0.96, 0.98)},
    }
    print(json.dumps(report, indent=1))
    write_result("hygiene-signals", "hygiene_signals", {"device": "cpu", **report}, argv)
    return report


if __name__ == "__main__":
    main()
