"""Annotation review for detection, measured: how many deliberately flipped box labels each signal finds.

    python -m bench.review_boxes [--config configs/bccd-cpu.json] [--flip 0.1] [--kind uniform|confusable] [--seed 0]
                                 [--signals-only | --no-cleanlab]

The detection CPU protocol's data, model and training (configs/bccd-cpu.json: BCCD, FCOS ResNet-18 FPN from
scratch, 200 SGD steps): every trainval image is labeled, and `flip` of its boxes get another class, uniformly or
the confusable one (the class a model trained on the clean boxes most often detects on R's boxes of the true
class). A model trained on the noisy boxes reviews them (isal_core.influence.review.box_review: influence of the
box relabeled to the model's other class, and of the box deleted; the model's disagreement; their mean rank),
against cleanlab's per-box swap score (`compute_swap_box_scores`, on out-of-fold detections as its docs ask) and
random. Reported: precision@k of the flipped boxes (k = the number of flips; per image it says little: at 10 % of
~13 boxes an image, most images hold a flip), the time of the box review, and the mAP on the evaluation images that
relabeling the top k boxes buys back. R is the protocol's 20 test images; mAP is on the other 52. Also: the share
of flipped and other boxes with a positive influence, and `first_order_check` (the sign of influence checked by
actual SGD steps). `--signals-only` trains the noisy model alone (no clean model unless
the flips are confusable, no cleanlab, no relabeled refits: ~12 min instead of ~95 here);
`--no-cleanlab` skips cleanlab's five out-of-fold models and its refit (~35 min).
Writes docs/results/bench/review-bccd-<kind>[-signals][-seed<N>].json.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from isal_core.influence.review import box_review, review_order
from isal_core.simulation.config import load_config
from isal_core.simulation.run import Simulation
from isal_core.train import evaluation

from .common import write_result
from .review import precision_recall


def flip_boxes(records, fraction: float, num_classes: int, rng, confusable: dict | None = None):
    """Records with `fraction` of all boxes relabeled, and the flipped (image, box) pairs."""
    boxes = [(i, j) for i, r in enumerate(records) for j in range(len(r.label["labels"]))]
    picked = sorted(boxes[k] for k in rng.choice(len(boxes), int(round(fraction * len(boxes))), replace=False))
    out = copied(records)
    for i, j in picked:
        true = out[i].label["labels"][j]
        out[i].label["labels"][j] = confusable[true] if confusable else \
            int(rng.choice([c for c in range(num_classes) if c != true]))
    return out, picked


def copied(records) -> list:
    """The records with labels of their own, to change without touching the originals."""
    return [replace(r, label={"boxes": r.label["boxes"], "labels": list(r.label["labels"])}) for r in records]


def cleaned(adapter, records) -> list:
    """The records with the boxes training sees (the dataset drops empty or unknown boxes): box j of a
    record is then box j of the review."""
    dataset = adapter.dataset(records)
    return [replace(r, label={"boxes": t["boxes"].tolist(), "labels": t["labels"].tolist()})
            for r, (_, t, _) in zip(records, (dataset[i] for i in range(len(records))))]


def detections(learner, adapter, model, records) -> list[dict]:
    """The model's detections (every score FCOS keeps) of `records`, in order, as numpy."""
    out = []
    for outputs, _, _ in evaluation.outputs(model, adapter, learner.loader(adapter.dataset(records)), learner.device):
        out += [{k: v.detach().cpu().numpy() for k, v in d.items()} for d in outputs.detections()]
    return out


def cleanlab_inputs(records, found, num_classes: int):
    """cleanlab.object_detection's labels and predictions (per image, per class [x1, y1, x2, y2, score])."""
    labels = [{"bboxes": np.asarray(r.label["boxes"], dtype=np.float32).reshape(-1, 4),
               "labels": np.asarray(r.label["labels"], dtype=np.int64)} for r in records]
    predictions = [[np.concatenate([d["boxes"][d["labels"] == c], d["scores"][d["labels"] == c, None]], axis=1)
                    .astype(np.float32) for c in range(num_classes)] for d in found]
    return labels, predictions


def most_confused(found, records, num_classes: int) -> dict[int, int]:
    """Per class, the other class detected most often on R's boxes of it (IoU >= 0.5, best score)."""
    from torchvision.ops import box_iou

    confusion = np.zeros((num_classes, num_classes))
    for d, r in zip(found, records):
        if not len(d["boxes"]) or not r.label["labels"]:
            continue
        iou = box_iou(torch.as_tensor(r.label["boxes"], dtype=torch.float32), torch.as_tensor(d["boxes"])).numpy()
        for j, true in enumerate(r.label["labels"]):
            hit = np.flatnonzero(iou[j] >= 0.5)
            if len(hit):
                confusion[true, d["labels"][hit[np.argmax(d["scores"][hit])]]] += 1
    np.fill_diagonal(confusion, -1)
    return {c: int(confusion[c].argmax()) for c in range(num_classes)}


def first_order_check(model, adapter, dataset, labeled, flipped, reference, params, count: int, step: float = 1e-3):
    """For the first `count` flipped boxes: R's loss after one SGD step (lr `step`, the review's parameters)
    on the image as annotated, minus that after a step on it with the box's true class. Negative: the
    wrong label lowers R's loss more, as the box's influence says it does (no influence code involved)."""
    from isal_core.influence.params import select_parameters

    tensors = [p for _, p in select_parameters(model, params)]
    ref = adapter.dataset(reference)
    items = [ref[i] for i in range(len(ref))]

    def ref_loss():
        with torch.no_grad():
            return sum(float(adapter.loss(adapter.forward(model, [x]), [t]).sum()) for x, t, _ in items)

    with evaluation.eval_mode(model):
        return _steps(model, adapter, dataset, labeled, flipped[:count], tensors, ref_loss, step)


def _steps(model, adapter, dataset, labeled, flipped, tensors, ref_loss, step):
    base, out = ref_loss(), []
    for i, j in flipped:
        image, target, _ = dataset[i]
        fixed = dict(target, labels=target["labels"].clone())
        fixed["labels"][j] = labeled[i].label["labels"][j]
        after = []
        for t in (target, fixed):
            grads = torch.autograd.grad(adapter.loss(adapter.forward(model, [image]), [t]).sum(), tensors)
            with torch.no_grad():
                for p, g in zip(tensors, grads):
                    p.sub_(step * g)
            after.append(ref_loss() - base)
            with torch.no_grad():
                for p, g in zip(tensors, grads):
                    p.add_(step * g)
        out.append(after[0] - after[1])
    return out


def out_of_fold(sim, records, seed: int, folds: int = 5) -> list[dict]:
    """Detections of each image by a model that never trained on it."""
    found: list = [None] * len(records)
    for part in np.array_split(np.random.default_rng(seed).permutation(len(records)), folds):
        learner = sim.learner(seed)
        rest = [records[i] for i in np.setdiff1d(np.arange(len(records)), part)]
        model = learner.fit(sim.adapter.dataset(rest, train=True))
        for i, d in zip(part, detections(learner, sim.adapter, model, [records[i] for i in part])):
            found[i] = d
    return found


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/bccd-cpu.json")
    ap.add_argument("--flip", type=float, default=0.1)
    ap.add_argument("--kind", choices=("uniform", "confusable"), default="uniform")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-steps", type=int, help="SGD steps per model (default: the config's)")
    ap.add_argument("--signals-only", action="store_true", help="precision of the ISAL signals only (one model)")
    ap.add_argument("--no-cleanlab", action="store_true", help="no cleanlab baseline (no out-of-fold models)")
    ap.add_argument("--direct-check", type=int, default=15, metavar="N",
                    help="first_order_check on the first N flipped boxes (0: none)")
    args = ap.parse_args(argv)
    from cleanlab.object_detection.rank import compute_swap_box_scores

    start = time.perf_counter()
    sim = Simulation(load_config(args.config, progress=False, min_steps=args.min_steps))
    data, adapter, classes = sim.data, sim.adapter, sim.data.classes
    labeled = cleaned(adapter, [r for r in data.train if r.label["labels"]])
    reference, held_out = data.records("test", data.reference), data.records("test", data.evaluation)
    learner = sim.learner(args.seed)
    fit = lambda recs: learner.fit(adapter.dataset(recs, train=True))  # noqa: E731
    mean_ap = lambda model: learner.evaluate(model, adapter.dataset(held_out))  # noqa: E731
    clean = fit(labeled) if args.kind == "confusable" or not args.signals_only else None
    confusable = most_confused(detections(learner, adapter, clean, reference), reference, len(classes)) \
        if args.kind == "confusable" else None
    if confusable:
        print("confusable:", {classes[a]: classes[b] for a, b in confusable.items()})
    rng = np.random.default_rng(args.seed)
    noisy, flipped = flip_boxes(labeled, args.flip, len(classes), rng, confusable)
    model, noisy_set = fit(noisy), adapter.dataset(noisy)
    scorer = learner.prepare("isal", model, noisy_set, adapter.dataset(reference))
    began = time.perf_counter()
    found = box_review(model, adapter, noisy_set, scorer.s_test, scorer.params, learner.device)
    review_s = time.perf_counter() - began
    deleted = box_review(model, adapter, noisy_set, scorer.s_test, scorer.params, learner.device, edit="delete")
    pairs = list(zip(found.image.tolist(), found.box.tolist()))
    flipped_at = np.asarray([pairs.index(p) for p in flipped])
    orders = {f"isal_{s}": np.asarray(review_order(found, s)) for s in ("influence", "loss", "combined")}
    orders |= {f"isal_{s}_delete": np.asarray(review_order(deleted, s)) for s in ("influence", "combined")}
    if not (args.signals_only or args.no_cleanlab):
        labels, predictions = cleanlab_inputs(noisy, out_of_fold(sim, noisy, args.seed), len(classes))
        swap = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1)
                               for s in compute_swap_box_scores(labels=labels, predictions=predictions)])
        orders["cleanlab_swap"] = np.argsort(swap, kind="stable")  # lower = more likely swapped
    orders["random"] = np.random.default_rng(args.seed + 1).permutation(len(pairs))
    by_box = {name: precision_recall(order, flipped_at) for name, order in orders.items()}
    for name, r in by_box.items():
        print(f"{name:<16} precision@k = recall@k = {r['precision_at_k']:.3f} ({r['hits']} of {r['k']} flips)")
    k = len(flipped)
    no_alternative = float((found.alternative < 0).double().mean())
    flipped_alternative = float((found.alternative[flipped_at] >= 0).double().mean())
    print(f"boxes with no other class detected on them: {no_alternative:.3f}; flipped boxes with one: "
          f"{flipped_alternative:.3f}")
    flipped_gain = found.influence[flipped_at]
    clean_gain = found.influence[np.setdiff1d(np.arange(len(pairs)), flipped_at)]
    signs = {"flipped_positive": round(float((flipped_gain > 0).double().mean()), 3),
             "clean_positive": round(float((clean_gain > 0).double().mean()), 3)}
    direct = first_order_check(model, adapter, noisy_set, labeled, flipped, reference, scorer.params,
                               args.direct_check)
    signs |= {"direct_check": [round(d, 6) for d in direct],
              "direct_negative": round(float(np.mean(np.asarray(direct) < 0)), 3) if direct else None}
    print(f"influence > 0 (relabel): flipped boxes {signs['flipped_positive']}, the others "
          f"{signs['clean_positive']}; one step on the wrong label lowers R's loss more than on the right one "
          f"for {signs['direct_negative']} of {len(direct)} flipped boxes")

    def relabeled(order):
        fixed = copied(noisy)
        for at in order[:k]:
            i, j = pairs[at]
            fixed[i].label["labels"][j] = labeled[i].label["labels"][j]
        return fixed

    ap_, recovered = {}, {}
    if not args.signals_only:
        ap_ = {"clean": mean_ap(clean), "noisy": mean_ap(model)}
        for name in ("isal_loss", "isal_combined", "cleanlab_swap"):  # isal_loss: the backend's default
            if name in orders:
                ap_[f"{name}_relabeled"] = mean_ap(fit(relabeled(orders[name])))
        lost = ap_["clean"] - ap_["noisy"]
        recovered = {n: round((v - ap_["noisy"]) / lost, 3) if lost > 0 else None
                     for n, v in ap_.items() if n.endswith("_relabeled")}
    print(f"mAP@0.5: {ap_}; share of the loss recovered by relabeling the top k: {recovered}")
    summary = {"bench": "review_boxes", "device": str(learner.device), "config": args.config, "kind": args.kind,
               "flip": args.flip, "seed": args.seed, "images": len(noisy), "boxes": len(pairs), "flips": k,
               "review_s": round(review_s, 1), "signals_only": args.signals_only,
               "cleanlab": "cleanlab_swap" in orders,
               "boxes_without_alternative": round(no_alternative, 3),
               "flipped_with_alternative": round(flipped_alternative, 3), "influence_signs": signs,
               "confusable": confusable and {classes[a]: classes[b] for a, b in confusable.items()},
               "found": by_box, "map50": {n: round(v, 4) for n, v in ap_.items()},
               "recovered": recovered, "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(summary))
    write_result(f"review-bccd-{args.kind}" + ("-signals" if args.signals_only else "")
                 + ("-no-cleanlab" if args.no_cleanlab and not args.signals_only else "")
                 + ("" if args.seed == 0 else f"-seed{args.seed}"), "review_boxes",
                 summary, argv)
    return summary


if __name__ == "__main__":
    main()
