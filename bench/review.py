"""Annotation review, measured: how many deliberately flipped labels each signal finds among its top k.

    python -m bench.review [--protocol default|scratch|pretrained] [--labeled 2000] [--flip 0.1]
                           [--kind uniform|confusable]

A labeled set of CIFAR-10 training images (the shared zip, else torchvision's download) gets `flip` of its labels
changed, uniformly to another class or to a confusable one: the class a model trained on the clean labels most
often predicts for R's images of the true class (on CIFAR-10 from scratch e.g. cat->dog; a fixed list of pairs
would leave the pretrained protocol's five classes, which hold no pair, uniform). A model is trained on the noisy
set as the backend would (`default`: the engine's defaults, a linear head on frozen EfficientNet-Lite0 features of
the packaged ImageNet weights, all ten classes; `scratch`: a small CNN from scratch; `pretrained`: the stand-in of
before, a linear head on the frozen features of --weights, e.g. the CIFAR-5 backbone of the pretrained protocol,
with its five other classes). Then each signal ranks the labeled set, and precision and recall of the flipped
labels among its top k (k = the number of flips) are reported for: ISAL's review (influence on R with the given
label, the loss, their combination, self-influence where the model is a linear head), the model's disagreement (the
predicted class's probability minus the given one's), cleanlab's find_label_issues on 5-fold out-of-fold
probabilities (as its docs ask), and random. Finally the top k of the combined review and of cleanlab are relabeled
with the true labels and the model retrained:
the accuracy the flips cost and how much each relabeling buys back. R is `reference` clean
test images; accuracy is on `evaluate` other test images. Writes docs/results/bench/
review-<protocol>-<kind>.json.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from isal_core.data.cifar10 import cifar10_root
from isal_core.data.images import load_records
from isal_core.learner import Learner
from isal_core.settings import EngineSettings
from isal_core.tasks.frozen import classification_adapter
from isal_core.train import evaluation

from .common import write_result

PRETRAINED_CLASSES = ["dog", "frog", "horse", "ship", "truck"]  # the pretrained protocol's target classes


def flip(records, fraction: float, num_classes: int, rng, confusable: dict | None = None) -> tuple[list, np.ndarray]:
    """Flip `fraction` of the labels: to `confusable[true]` when given, else uniformly to another class."""
    n = len(records)
    flipped = rng.choice(n, int(round(fraction * n)), replace=False)
    out = list(records)
    for i in flipped:
        true = records[i].label
        if confusable is not None:
            new = confusable[true]
        else:
            new = int(rng.choice([c for c in range(num_classes) if c != true]))
        out[i] = replace(records[i], label=new)
    return out, np.sort(flipped)


def precision_recall(order, flipped: np.ndarray) -> dict:
    k = len(flipped)
    hits = len(set(np.asarray(order)[:k].tolist()) & set(flipped.tolist()))
    return {"precision_at_k": round(hits / k, 3), "recall_at_k": round(hits / k, 3), "hits": hits, "k": k}


def most_confused(probs: np.ndarray, reference) -> dict[int, int]:
    """For each class, the other class a model trained on the clean labels (its probabilities on R
    given) predicts most often on R's images of it."""
    classes = probs.shape[1]
    confusion = np.zeros((classes, classes))
    np.add.at(confusion, ([r.label for r in reference], probs.argmax(1)), 1)
    np.fill_diagonal(confusion, -1)
    return {c: int(confusion[c].argmax()) for c in range(classes)}


def predict(learner, adapter, model, records) -> np.ndarray:
    """Class probabilities of `records`, in order."""
    outs = evaluation.outputs(model, adapter, learner.loader(adapter.dataset(records)), learner.device)
    return torch.cat([adapter.probabilities(out).cpu() for out, _, _ in outs]).double().numpy()


def out_of_fold(settings, adapter, records, seed: int, folds: int = 5) -> np.ndarray:
    """Predicted probabilities of each record from a model that never trained on it (cleanlab's input)."""
    n, probs = len(records), np.zeros((len(records), adapter.num_classes))
    parts = np.array_split(np.random.default_rng(seed).permutation(n), folds)
    for part in parts:
        train = [records[i] for i in np.setdiff1d(np.arange(n), part)]
        learner = Learner(adapter, settings, seed)
        model = learner.fit(adapter.dataset(train, train=True))
        probs[part] = predict(learner, adapter, model, [records[i] for i in part])
    return probs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=("default", "scratch", "pretrained"), default="default")
    ap.add_argument("--weights", default="runs/backbones/cifar5-small_cnn.pt", help="pretrained: the backbone")
    ap.add_argument("--labeled", type=int, default=2000)
    ap.add_argument("--reference", type=int, default=500)
    ap.add_argument("--evaluate", type=int, default=2000)
    ap.add_argument("--flip", type=float, default=0.1)
    ap.add_argument("--kind", choices=("uniform", "confusable"), default="uniform")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from cleanlab.filter import find_label_issues

    start = time.perf_counter()
    root = cifar10_root()
    classes, train = load_records(f"{root}/train")
    _, test = load_records(f"{root}/test", classes)
    if args.protocol == "pretrained":
        keep = {classes.index(c): i for i, c in enumerate(PRETRAINED_CLASSES)}
        train = [replace(r, label=keep[r.label]) for r in train if r.label in keep]
        test = [replace(r, label=keep[r.label]) for r in test if r.label in keep]
        classes = PRETRAINED_CLASSES
        settings = EngineSettings(arch="small_cnn", weights=args.weights, damping=0.1, hessian_samples=0)
    elif args.protocol == "scratch":
        settings = EngineSettings(arch="small_cnn", weights=None)
    else:
        settings = EngineSettings()
    rng = np.random.default_rng(args.seed)
    labeled = [train[i] for i in rng.choice(len(train), args.labeled, replace=False)]
    picked = rng.permutation(len(test))
    reference = [test[i] for i in picked[:args.reference]]
    evaluation = [test[i] for i in picked[args.reference:args.reference + args.evaluate]]
    adapter = classification_adapter(settings, len(classes), settings.device, settings.batch_size)
    learner = Learner(adapter, settings, args.seed)
    clean = learner.fit(adapter.dataset(labeled, train=True))
    confusable = most_confused(predict(learner, adapter, clean, reference), reference) \
        if args.kind == "confusable" else None
    if confusable:
        print("confusable:", {classes[a]: classes[b] for a, b in confusable.items()})
    noisy, flipped = flip(labeled, args.flip, len(classes), rng, confusable)
    accuracy = lambda recs: learner.evaluate(learner.fit(adapter.dataset(recs, train=True)),  # noqa: E731
                                             adapter.dataset(evaluation))
    model, found = learner.review(adapter.dataset(noisy), adapter.dataset(reference),
                                  train_set=adapter.dataset(noisy, train=True))
    probs = predict(learner, adapter, model, noisy)
    given = np.array([r.label for r in noisy])
    disagreement = probs.max(1) - probs[np.arange(len(given)), given]
    oof = out_of_fold(settings, adapter, noisy, args.seed)
    cleanlab_order = find_label_issues(given, oof, return_indices_ranked_by="self_confidence")
    cleanlab_full = np.concatenate([cleanlab_order, np.setdiff1d(np.arange(len(given)), cleanlab_order)])
    orders = {f"isal_{s}": np.argsort(-found.scores(s).numpy(), kind="stable") for s in ("influence", "loss",
                                                                                           "combined")}
    if found.self_influence is not None:
        cross_fitted = ("oof_loss", "oof_combined") if found.oof_loss is not None else ()
        for signal in ("self_influence", "loo_loss") + cross_fitted:
            orders[f"isal_{signal}"] = np.argsort(-found.scores(signal).numpy(), kind="stable")
    orders["disagreement"] = np.argsort(-disagreement, kind="stable")
    # what cross-fitting would give the review: the out-of-fold loss (cleanlab's input), alone and beside influence
    oof_loss = -np.log(np.clip(oof[np.arange(len(given)), given], 1e-12, None))
    orders["oof_loss"] = np.argsort(-oof_loss, kind="stable")
    rank = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable")  # noqa: E731
    orders["oof_loss_and_influence"] = np.argsort(-(rank(oof_loss) + rank(found.influence.numpy())), kind="stable")
    orders["cleanlab"] = cleanlab_full
    orders["random"] = np.random.default_rng(args.seed + 1).permutation(len(given))
    found_by = {name: precision_recall(order, flipped) for name, order in orders.items()}
    for name, r in found_by.items():
        print(f"{name:<16} precision@k = recall@k = {r['precision_at_k']:.3f} ({r['hits']} of {r['k']} flips)")
    k = len(flipped)

    def relabeled(order):
        fixed = list(noisy)
        for i in order[:k]:
            fixed[i] = labeled[i]
        return fixed

    acc = {"clean": learner.evaluate(clean, adapter.dataset(evaluation)), "noisy": accuracy(noisy),
           "isal_combined_relabeled": accuracy(relabeled(orders["isal_combined"])),
           "cleanlab_relabeled": accuracy(relabeled(orders["cleanlab"]))}
    lost = acc["clean"] - acc["noisy"]
    recovered = {name: round((acc[name] - acc["noisy"]) / lost, 3) if lost > 0 else None
                 for name in ("isal_combined_relabeled", "cleanlab_relabeled")}
    print(f"accuracy: {acc}; share of the loss recovered by relabeling the top k: {recovered}")
    summary = {"bench": "review", "device": "cpu", "protocol": args.protocol, "kind": args.kind, "flip": args.flip,
               "labeled": args.labeled, "seed": args.seed, "flips": k,
               "confusable": confusable and {classes[a]: classes[b] for a, b in confusable.items()}, "found": found_by,
               "accuracy": {n: round(a, 4) for n, a in acc.items()},
               "recovered": recovered, "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(summary))
    extra = ("" if args.labeled == 2000 else f"-{args.labeled}") + ("" if args.seed == 0 else f"-seed{args.seed}")
    write_result(f"review-{args.protocol}-{args.kind}{extra}", "review", summary, argv)
    return summary


if __name__ == "__main__":
    main()
