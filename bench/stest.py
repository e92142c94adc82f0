"""s_test solvers: the reference code's LiSSA against the default solver (CG), on a model trained on real images.

    python -m bench.stest [--model auto|small_cnn|resnet18_cifar] [--labeled 256] [--damping 100] [--repeats 3]

The model is trained on `labeled` CIFAR-10 training images (the shared zip, else
torchvision's download), R is `reference` test images. The reference-style LiSSA (batch 1,
double backprop, 4 chains x 250 steps, damp 0.01, scale 1e4) gives an estimate with some
cosine similarity to a converged CG solution of the same damped system; we time how long
each solver takes to reach that cosine. After a warm-up of both, `repeats` rounds time
them in alternating order; the speed-up is the median and range of the per-round ratios.
Writes docs/results/bench/stest-<device>-damping<d>.json.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from isal_core.data.cifar10 import cifar10_root
from isal_core.data.images import load_records
from isal_core.influence.gradients import HessianOperator, collect_batches, reference_gradient
from isal_core.influence.params import select_parameters
from isal_core.influence.stest import CG, LiSSA
from isal_core.nets.models import build_model
from isal_core.settings import REFERENCE_DAMPING, TrainSettings
from isal_core.tasks.classification import ClassificationAdapter
from isal_core.train.loop import train
from isal_core.utils.runtime import resolve_device

from .common import describe, ratio_spread, write_result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="auto", help="auto: resnet18_cifar on a GPU, small_cnn on a CPU "
                    "(ResNet-18's 1,000 batch-1 double-backprop steps take over 20 minutes on 2 cores)")
    ap.add_argument("--labeled", type=int, default=256)
    ap.add_argument("--reference", type=int, default=128)
    ap.add_argument("--depth", type=int, default=250)
    ap.add_argument("--chains", dest="repeats_lissa", type=int, default=4, help="LiSSA chains averaged")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--damping", type=float, default=REFERENCE_DAMPING,
                    help="lambda of H + lambda I; the reference's damp 0.01 x scale 1e4 = 100")
    ap.add_argument("--train-epochs", type=int, default=30, help="train on the labeled set first (at least 500 "
                    "steps), for the curvature of a trained model")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds after the warm-up")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    if args.model == "auto":
        args.model = "resnet18_cifar" if device.type == "cuda" else "small_cnn"
    torch.manual_seed(0)
    model = build_model(args.model, 10).to(device).eval()
    adapter = ClassificationAdapter(args.model, 10, 32)
    root = cifar10_root()
    classes, train_records = load_records(f"{root}/train")
    _, test_records = load_records(f"{root}/test", classes)
    def pick(records, n, seed):
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))
        return [records[i] for i in order[:n].tolist()]
    labeled = adapter.dataset(pick(train_records, args.labeled, 0))
    reference = adapter.dataset(pick(test_records, args.reference, 1))
    loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=args.batch_size)  # noqa: E731
    if args.train_epochs:
        train(model, adapter, adapter.dataset(labeled.records, train=True),
              TrainSettings(epochs=args.train_epochs, lr=0.05, batch_size=64), device=device)
    params = select_parameters(model, "weights")
    v = reference_gradient(model, adapter, loader(reference), params, device)
    op = HessianOperator(model, adapter, params, collect_batches(adapter, loader(labeled), device))
    print(describe(device), f"| {args.model}, {op.dim:,} parameters, labeled {args.labeled}, damping {args.damping:g}")

    start = time.perf_counter()
    exact = CG(damping=args.damping, tol=1e-8, max_iter=200).solve(op, v)
    print(f"converged CG: {exact.info['iterations']} iterations, residual {exact.info['residual']:.1e}, "
          f"{time.perf_counter() - start:.1f} s (not timed below)")
    cosine = lambda x: float(F.cosine_similarity(x.double().flatten(), exact.s_test.double().flatten(),  # noqa: E731
                                                 dim=0))

    lissa = LiSSA(damping=args.damping, scale=1e4, depth=args.depth, repeats=args.repeats_lissa, batch_size=1)

    def reference_solve():
        start = time.perf_counter()
        return lissa.solve(op, v), time.perf_counter() - start

    def default_solve(target):
        trace, start = [], time.perf_counter()
        CG(damping=args.damping, callback=lambda it, x: trace.append((it, time.perf_counter() - start, cosine(x)))
           ).solve(op, v)
        return next(((it, s, c) for it, s, c in trace if c >= target), None), trace

    ref, _ = reference_solve()  # warm-up of both (and the target cosine: LiSSA is seeded, the same every time)
    target = cosine(ref.s_test)
    _, trace = default_solve(target)
    for it, s, c in trace:
        print(f"default CG iteration {it}: {s:7.1f} s, cosine {c:.6f}")
    ref_seconds, cg_seconds, reached = [], [], None
    for r in range(args.repeats):
        for solver in ("lissa", "cg") if r % 2 == 0 else ("cg", "lissa"):
            if solver == "lissa":
                ref_seconds.append(reference_solve()[1])
            else:
                reached, _ = default_solve(target)
                cg_seconds.append(reached[1] if reached else float("nan"))
    print(f"reference LiSSA ({args.repeats_lissa} x {args.depth} steps, batch 1): {ref_seconds} s, cosine to "
          f"converged {target:.6f}")
    identity = cosine(v)
    print(f"identity (gradient similarity) cosine: {identity:.6f}")
    speedup = ratio_spread(ref_seconds, cg_seconds) if reached is not None else None
    if speedup is None:
        print("default CG never reached the reference cosine")
    else:
        print(f"default CG reaches cosine {target:.6f} at iteration {reached[0]} in {cg_seconds} s: "
              f"{speedup['median']:.1f}x faster (range {speedup['min']:.1f} .. {speedup['max']:.1f})")
    summary = {"bench": "stest", "device": str(device), "model": args.model, "parameters": op.dim,
               "damping": args.damping,
               "labeled": args.labeled, "data": root, "repeats": args.repeats, "reference_seconds": ref_seconds,
               "reference_cosine": target, "default_seconds_to_reach": cg_seconds,
               "default_iterations_to_reach": None if reached is None else reached[0],
               "identity_cosine": identity, "speedup": speedup}
    print(json.dumps(summary))
    write_result(f"stest-{device.type}-damping{args.damping:g}", "stest", summary, argv)
    return summary


if __name__ == "__main__":
    main()
