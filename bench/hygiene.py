"""Issue 36's targets: data hygiene on CIFAR-10 with planted near-duplicates and outliers, beside cleanlab's Datalab,
and what serving them last saves annotators.

    python -m bench.hygiene [--pool 5000] [--seeds 0,1,2] [--rounds 9] [--step 40] [--split evaluate|explore]
                            [--copies 0.05] [--outliers 0.02] [--ablation]

The pool: `--pool` CIFAR-10 training images, none of the 5,000 (random.Random(1)'s) the thresholds were chosen
on (`--split explore` draws from those instead: where the rules were tried), of which 5 % (`--copies`) are
replaced by near-duplicates of other pool images (a mirror image, a crop of 1-3 px resized back, or JPEG
re-compression at quality 30, 50 or 75: one each, in turn) and 2 % (`--outliers`) by outliers (uniform noise,
blank frames, BCCD blood-cell photos, a third each).

1. Detection: precision and recall of the near-duplicates (by image: a copy or its source; and by pair) and of the
   outliers, for isal_core.selection.hygiene and for cleanlab's Datalab (`near_duplicate` and `outlier` issue types,
   its defaults) on the same Lite0 embeddings, with the seconds each took.
2. Serving: a simulation (isal_core.simulation.Simulation) on that pool as its train split (a copy has its
   source's label, an outlier a random one), R and the evaluation set from the CIFAR-10 test split: 40 random
   labels, then `--rounds`-1 rounds of `--step`; per strategy, the labels spent on a near-duplicate of an image
   labeled before it (earlier, or earlier in the same batch), the outliers labeled, and the accuracy at the end:
   random, the defaults before data hygiene (auto: TypiClust on the frozen embeddings, cluster serving), and the
   defaults with it (the served order of backend.job.hygiene: duplicates of labeled images and a group's second
   members, then outliers, last). Writes docs/results/bench/hygiene.json.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from isal_core.data.cifar10 import cifar10_root
from isal_core.data.images import load_records, open_image
from isal_core.selection import resolve_strategy, serves_clusters
from isal_core.selection.hygiene import find_hygiene, hygienic_order, thumbnail
from isal_core.selection.serving import served_order
from isal_core.simulation.config import SimulationConfig
from isal_core.simulation.run import Simulation

from .common import write_result

BCCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd-voc.zip"
KINDS = ("flip", "crop1", "jpeg30", "crop2", "jpeg50", "crop3", "jpeg75")


def near_copy(image: Image.Image, kind: str) -> Image.Image:
    w, h = image.size
    if kind == "flip":
        return image.transpose(Image.FLIP_LEFT_RIGHT)
    if kind.startswith("crop"):
        m = int(kind[-1])
        return image.crop((m, m, w - m, h - m)).resize((w, h))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=int(kind[4:]))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def stranger(k: int, rng: random.Random, photos: list[tuple[zipfile.ZipFile, str]]) -> Image.Image:
    if k % 3 == 0:
        return Image.fromarray(np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    if k % 3 == 1 or not photos:
        return Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3)))
    z, name = photos[k % len(photos)]
    return Image.open(io.BytesIO(z.read(name))).convert("RGB")


def build(root: Path, n: int, split: str = "evaluate", copies: float = 0.05, strangers: float = 0.02,
          seed: int = 7) -> dict:
    """train/<class>/ (the pool with its planted copies and outliers) and test/<class>/ under root; the truth."""
    rng = random.Random(seed)
    classes, records = load_records(f"{cifar10_root()}/train")
    explored = random.Random(1).sample(records, 5000)  # where the thresholds were chosen
    fresh = explored if split == "explore" else [r for r in records if r.path not in {e.path for e in explored}]
    n_copies, n_out = round(copies * n), round(strangers * n)
    originals = rng.sample(fresh, n - n_copies - n_out)
    photos = []
    if BCCD.is_file():
        z = zipfile.ZipFile(BCCD)
        photos = [(z, m) for m in sorted(z.namelist()) if m.lower().endswith(".jpg")]
    names, truth = [], {"copy_of": {}, "kind": {}, "outliers": []}

    def save(im: Image.Image, label: int, name: str) -> None:
        (root / "train" / classes[label]).mkdir(parents=True, exist_ok=True)
        im.save(root / "train" / classes[label] / name)
        names.append(f"{classes[label]}/{name}")

    for i, r in enumerate(originals):
        save(open_image(r.path).convert("RGB"), r.label, f"o{i:05d}.png")
    for k, i in enumerate(rng.sample(range(len(originals)), n_copies)):
        kind = KINDS[k % len(KINDS)]
        save(near_copy(open_image(originals[i].path).convert("RGB"), kind), originals[i].label, f"c{k:05d}.png")
        truth["copy_of"][names[-1]], truth["kind"][names[-1]] = names[i], kind
    for k in range(n_out):
        save(stranger(k, rng, photos), rng.randrange(len(classes)), f"x{k:05d}.png")
        truth["outliers"].append(names[-1])
    test_classes, test = load_records(f"{cifar10_root()}/test")
    for r in rng.sample(test, 2000):
        (root / "test" / test_classes[r.label]).mkdir(parents=True, exist_ok=True)
        open_image(r.path).convert("RGB").save(root / "test" / test_classes[r.label] / f"{Path(r.id).stem}.png")
    return truth


def scores(found: set, true: set) -> dict:
    tp = len(found & true)
    return {"precision": round(tp / len(found), 4) if found else None, "recall": round(tp / len(true), 4),
            "found": len(found), "true": len(true)}


def detection(sim: Simulation, truth: dict) -> dict:
    names = [sim.data.train[i].id for i in range(len(sim.data.train))]
    row = {name: i for i, name in enumerate(names)}
    x = sim.dataset(list(range(len(names)))).x
    true_pairs = {tuple(sorted((row[c], row[s]))) for c, s in truth["copy_of"].items()}
    true_items = {r for p in true_pairs for r in p}
    true_out = {row[o] for o in truth["outliers"]}
    start = time.time()
    found = find_hygiene(x, lambda r: thumbnail(sim.data.train[r].path))
    ours_s = time.time() - start
    pairs = {(a, b) for g in found.groups for a in g for b in g if a < b}
    by_kind = {k: round(float(np.mean([tuple(sorted((row[c], row[s]))) in pairs for c, s in truth["copy_of"].items()
                                       if truth["kind"][c] == k])), 3) for k in KINDS}
    out = {"isal": {"duplicates_by_image": scores({r for g in found.groups for r in g}, true_items),
                    "duplicate_pairs": scores(pairs, true_pairs), "pair_recall_by_kind": by_kind,
                    "outliers": scores(set(found.outliers), true_out), "seconds": round(ours_s, 2)}}
    try:
        from cleanlab import Datalab
    except ImportError:
        return {**out, "cleanlab": "not installed (pip install 'cleanlab[datalab]')"}
    labels = {"label": [sim.data.train[i].label for i in range(len(names))]}
    k = max(10, round(0.01 * len(names)))  # its defaults, and its kNN at our k (1 % of the images)
    for name, options in (("cleanlab", {}), (f"cleanlab_k{k}", {"k": k})):
        start = time.time()
        lab = Datalab(data=labels, label_name="label", verbosity=0)
        lab.find_issues(features=x.numpy(), issue_types={"near_duplicate": dict(options), "outlier": dict(options)})
        near, strange = lab.get_issues("near_duplicate"), lab.get_issues("outlier")
        flagged = set(np.flatnonzero(near["is_near_duplicate_issue"].to_numpy()).tolist())
        cl_pairs = {tuple(sorted((i, int(j)))) for i in flagged for j in near["near_duplicate_sets"].iloc[i]}
        odd = set(np.flatnonzero(strange["is_outlier_issue"].to_numpy()).tolist())
        out[name] = {"version": __import__("cleanlab").__version__, "options": options,
                     "duplicates_by_image": scores(flagged, true_items),
                     "duplicate_pairs": scores(cl_pairs, true_pairs), "outliers": scores(odd, true_out),
                     "seconds": round(time.time() - start, 2)}
    return out


def served(sim: Simulation, strategy: str, model, labeled: list[int], seed: int, round_number: int, found, row_of,
           hygiene: bool) -> list[int]:
    """The round's picks: Simulation.select's served order (cluster serving where the strategy has it), with
    the flagged images moved last when `hygiene` (backend.job.hygiene's order)."""
    if not hygiene:
        return sim.select(strategy, model, labeled, seed, round_number)
    order, _ = sim._round(strategy, model, labeled, seed, round_number)
    if serves_clusters(resolve_strategy(strategy, sim.settings), sim.settings):
        clusters = sim.clusters(seed)
        order = [order[p] for p in served_order(range(len(order)), [clusters[i] for i in order],
                                                [clusters[i] for i in labeled])]
    taken = set(labeled)
    roles = ["labeled" if i in taken else "pool" for i in sorted(row_of)]
    kept, _ = hygienic_order(range(len(order)), [row_of[i] for i in order], found, roles)
    return [order[p] for p in kept[:sim.config.step_at(round_number)]]


def serving(sim: Simulation, truth: dict, seeds: list[int], ablation: bool = False) -> dict:
    names = {sim.data.train[i].id: i for i in range(len(sim.data.train))}
    group = {names[c]: names[s] for c, s in truth["copy_of"].items()} | {names[s]: names[s]
                                                                          for s in truth["copy_of"].values()}
    strange = {names[o] for o in truth["outliers"]}
    runs = {"random": ("random", False), "defaults before hygiene": ("auto", False),
            "defaults (hygiene)": ("auto", True)}
    if ablation:  # which half of the deferral does what
        runs = {"defaults before hygiene": ("auto", False), "defaults, nothing deferred (the same, a check)":
                ("auto", "nothing"), "defaults, outliers deferred only": ("auto", "outliers"),
                "defaults, duplicates deferred only": ("auto", "duplicates")}
    out = {name: [] for name in runs}
    for seed in seeds:
        universe = sorted(sim.universe(seed))
        row_of = {i: r for r, i in enumerate(universe)}
        every = find_hygiene(sim.dataset(universe).x, lambda r: thumbnail(sim.data.train[universe[r]].path))
        for name, (strategy, hygiene) in runs.items():
            found = replace(every, groups=[] if hygiene in ("outliers", "nothing") else every.groups,
                            outliers=[] if hygiene in ("duplicates", "nothing") else every.outliers)
            labeled, dup, odd, start = list(sim.initial(seed)), 0, 0, time.time()
            seen = {group[i] for i in labeled if i in group}
            for round_number in range(1, sim.config.rounds):
                model = sim.train(labeled, seed)
                for i in served(sim, strategy, model, labeled, seed, round_number, found, row_of, hygiene):
                    dup += i in group and group[i] in seen
                    odd += i in strange
                    seen.add(group.get(i, -1))
                    labeled.append(i)
            accuracy = sim.evaluate(sim.train(labeled, seed))
            out[name].append({"seed": seed, "labels_on_duplicates_of_labeled": dup, "outliers_labeled": odd,
                              "served": len(labeled) - sim.config.initial, "accuracy": round(accuracy, 4),
                              "seconds": round(time.time() - start, 1)})
            print(name, out[name][-1], flush=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=5000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--step", type=int, default=40)
    ap.add_argument("--skip-serving", action="store_true")
    ap.add_argument("--split", choices=("evaluate", "explore"), default="evaluate")
    ap.add_argument("--copies", type=float, default=0.05, help="the pool's fraction replaced by near-duplicates")
    ap.add_argument("--outliers", type=float, default=0.02, help="the pool's fraction replaced by outliers")
    ap.add_argument("--ablation", action="store_true", help="serve with only the outliers or only the duplicates "
                                                            "deferred, beside both")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        truth = build(Path(tmp), args.pool, args.split, args.copies, args.outliers)
        config = SimulationConfig(data=tmp, initial=args.step, step=args.step, rounds=args.rounds, reference_size=100,
                                  device="cpu", progress=False, out=str(Path(tmp) / "run"))
        sim = Simulation(config)
        report = {"pool": args.pool, "split": args.split, "planted": {"near_duplicates": len(truth["copy_of"]),
                                                 "outliers": len(truth["outliers"])},
                  "detection": detection(sim, truth)}
        print(json.dumps(report, indent=1), flush=True)
        if not args.skip_serving:
            report["serving"] = serving(sim, truth, [int(s) for s in args.seeds.split(",")], args.ablation)
    name = "hygiene" + ("-explore" if args.split == "explore" else "")
    if (args.copies, args.outliers) != (0.05, 0.02):
        name += f"-copies{args.copies:g}-outliers{args.outliers:g}"
    name += "-ablation" if args.ablation else ""
    write_result(name, "hygiene", {"device": "cpu", **report}, argv)
    return report


if __name__ == "__main__":
    main()
