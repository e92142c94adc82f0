"""Issue 37's protocol, measured as a benchmark: active learning for multi-label tagging on CIFAR-10 mosaics.

    python -m bench.tagging [--pool 3000] [--test 600] [--reference 100] [--seeds 0,1,2,3,4]
                            [--initial 20] [--step 20] [--rounds 10] [--strategies coreset,auto,random,...]
                            [--split test|validation]

A stand-in for `isal simulate`, which has no tagging task yet: each image is a 2x2 mosaic (64 px) of four CIFAR-10
images, tagged with the classes it shows (1 to 4 of 10). The pool is `--pool` mosaics of training images, R
`--reference` and the evaluation set the rest of `--test` mosaics of test images (`--split validation`: of
training images the pool never shows, to choose settings on). Per seed the same `--initial` random labels, then
`--rounds` - 1 rounds of `--step`: each round fits the tagging head from scratch on the default frozen features
(EfficientNet-Lite0, isal_core.tasks.multilabel), measures mAP on the evaluation mosaics and ranks the pool with
the strategy, served through k-means clusters of the embeddings where the backend would
(isal_core.selection.serving). `auto` is the engine's default on frozen features (TypiClust); the backend's
default for tagging, coreset (DEFAULTS), was chosen with `--split validation`. Prints each round and the summary
(labels each strategy needs for random's final mAP, and where the defaults lead); writes
docs/results/bench/tagging[-validation].json.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from isal_core.data.cifar10 import cifar10_root
from isal_core.data.images import ImageRecord, load_records, open_image
from isal_core.learner import Learner
from isal_core.selection import resolve_strategy, serves_clusters
from isal_core.selection.serving import assign, kmeans, served_order
from isal_core.settings import EngineSettings
from isal_core.tasks.frozen import Embeddings
from isal_core.tasks.multilabel import multilabel_adapter

from .common import write_result


def mosaics(root: Path, split: str, n: int, seed: int, part: slice = slice(None)) -> list[ImageRecord]:
    """n mosaics of four images of `split` (its records[part]) under root/<name>, each labeled with the sorted
    classes it shows."""
    rng = random.Random(seed)
    records = load_records(f"{cifar10_root()}/{split}")[1]
    records = random.Random(0).sample(records, len(records))[part]  # (the records come sorted by class)
    (root / f"{split}-{seed}").mkdir(parents=True)
    out = []
    for k in range(n):
        four = rng.sample(records, 4)
        canvas = Image.new("RGB", (64, 64))
        for j, r in enumerate(four):
            canvas.paste(open_image(r.path).convert("RGB"), ((j % 2) * 32, (j // 2) * 32))
        path = root / f"{split}-{seed}" / f"{k:05d}.png"
        canvas.save(path)
        out.append(ImageRecord(path.name, str(path), sorted({r.label for r in four})))
    return out


def subset(data: Embeddings, rows: list[int]) -> Embeddings:
    return Embeddings(data.x[rows], [data.labels[i] for i in rows])


def run(strategy: str, seed: int, train: Embeddings, reference: Embeddings, evaluation: Embeddings, adapter,
        settings: EngineSettings, args, clusters: list[int]) -> list[dict]:
    """One seed's curve: [{"labels", "mAP"}] at each round."""
    labeled = random.Random(seed).sample(range(len(train)), args.initial)
    name = resolve_strategy(strategy, settings)
    curve = []
    for round_number in range(args.rounds):
        taken = set(labeled)
        pool = [i for i in range(len(train)) if i not in taken]
        learner = Learner(adapter, settings, seed, progress=False)
        if round_number == args.rounds - 1:
            model = learner.fit(subset(train, sorted(labeled)))
            curve.append({"labels": len(labeled), "mAP": round(learner.evaluate(model, evaluation), 4)})
            break
        result = learner.round(name, subset(train, sorted(labeled)), subset(train, pool), reference,
                               budget=args.step, round_number=round_number)
        curve.append({"labels": len(labeled), "mAP": round(learner.evaluate(result.model, evaluation), 4)})
        order = result.ranking.order.tolist()
        if serves_clusters(name, settings):  # as the backend serves it: the best of the least-labeled cluster
            order = served_order(order, [clusters[pool[p]] for p in order], [clusters[i] for i in labeled])
        labeled += [pool[p] for p in order[:args.step]]
    return curve


#: The backend's ISAL_STRATEGY=auto for tagging (backend.tasktypes.tags, chosen on --split validation); "auto"
#: here is the engine's auto, TypiClust on frozen features (the single-label default).
DEFAULTS = "coreset"


def summary(curves: dict[str, list[list[dict]]]) -> dict:
    """Mean mAP per budget, the labels each strategy needs to reach random's final mean (linear between rounds),
    and the rounds where the tagging defaults (DEFAULTS) lead every other strategy."""
    means = {s: [float(np.mean([c[r]["mAP"] for c in runs])) for r in range(len(runs[0]))]
             for s, runs in curves.items()}
    labels = [p["labels"] for p in next(iter(curves.values()))[0]]
    target = means["random"][-1] if "random" in means else None

    def reaches(m: list[float]) -> float | None:
        for r in range(len(m)):
            if m[r] >= target:
                if r == 0:
                    return labels[0]
                return labels[r - 1] + (target - m[r - 1]) / (m[r] - m[r - 1]) * (labels[r] - labels[r - 1])
        return None

    out = {"labels": labels, "mean_mAP": {s: [round(v, 4) for v in m] for s, m in means.items()}}
    if target is not None:
        out["labels_to_random_final"] = {s: None if reaches(m) is None else round(reaches(m), 1)
                                         for s, m in means.items()}
    if DEFAULTS in means:
        out["defaults_lead_at"] = [labels[r] for r in range(len(labels))
                                   if all(means[DEFAULTS][r] > m[r] for s, m in means.items() if s != DEFAULTS)]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=3000)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--reference", type=int, default=100)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--initial", type=int, default=20)
    ap.add_argument("--step", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--strategies", default="coreset,auto,random,entropy,badge")
    ap.add_argument("--split", choices=("test", "validation"), default="test",
                    help="validation: R and the evaluation mosaics from training images the pool never shows (the "
                         "last 10,000, the pool's from the first 40,000), to choose settings on; test: from the "
                         "test split, to report")
    args = ap.parse_args(argv)
    settings = EngineSettings(device="cpu")
    adapter = multilabel_adapter(settings, 10, "cpu", 64)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        train = adapter.dataset(mosaics(Path(tmp), "train", args.pool, 1, slice(0, 40000)))
        test = adapter.dataset(mosaics(Path(tmp), "test", args.test, 2) if args.split == "test" else
                               mosaics(Path(tmp), "train", args.test, 3, slice(40000, None)))
    reference, evaluation = subset(test, list(range(args.reference))), subset(test, list(range(args.reference,
                                                                                                   len(test))))
    clusters = assign(train.x, kmeans(train.x, 10, 0)).tolist()
    print(f"embedded {len(train)} + {len(test)} mosaics in {time.time() - start:.0f} s", flush=True)
    curves: dict[str, list[list[dict]]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for strategy in args.strategies.split(","):
            curve = run(strategy, seed, train, reference, evaluation, adapter, settings, args, clusters)
            curves.setdefault(strategy, []).append(curve)
            print(strategy, seed, [p["mAP"] for p in curve], flush=True)
    report = {"split": args.split, "pool": args.pool, "evaluation": len(evaluation), "reference": len(reference),
              "seeds": args.seeds, **summary(curves), "curves": curves}
    print(json.dumps({k: v for k, v in report.items() if k != "curves"}, indent=1))
    write_result("tagging" if args.split == "test" else "tagging-validation", "tagging", {"device": "cpu", **report},
                 argv)
    return report


if __name__ == "__main__":
    main()
