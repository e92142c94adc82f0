"""s_test solvers: the reference code's LiSSA against the default solver (CG), one run.

    python -m bench.stest [--model auto|small_cnn|resnet18_cifar] [--labeled 256] [--device auto]

The reference-style LiSSA (batch 1, double backprop, 4 chains x 250 steps, damp 0.01,
scale 1e4) gives an estimate with some cosine similarity to a converged CG solution of
the same damped system. We time how long each solver takes to reach that cosine.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from isal_core.adapter import ClassificationAdapter
from isal_core.data import TensorDataset3
from isal_core.gradients import HessianOperator, collect_batches, reference_gradient
from isal_core.models import build_model
from isal_core.params import select_parameters
from isal_core.runtime import resolve_device
from isal_core.settings import REFERENCE_DAMPING, TrainSettings
from isal_core.stest import CG, LiSSA
from isal_core.training import train

from .common import describe


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="auto", help="auto: resnet18_cifar on a GPU, small_cnn on a CPU "
                    "(ResNet-18's 1,000 batch-1 double-backprop steps take over 20 minutes on 2 cores)")
    ap.add_argument("--labeled", type=int, default=256)
    ap.add_argument("--reference", type=int, default=128)
    ap.add_argument("--depth", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--damping", type=float, default=REFERENCE_DAMPING,
                    help="lambda of H + lambda I; the reference's damp 0.01 x scale 1e4 = 100")
    ap.add_argument("--train-epochs", type=int, default=3, help="train on the labeled set first, for real curvature")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    if args.model == "auto":
        args.model = "resnet18_cifar" if device.type == "cuda" else "small_cnn"
    torch.manual_seed(0)
    model = build_model(args.model, 10).to(device).eval()
    adapter = ClassificationAdapter()
    g = torch.Generator().manual_seed(0)
    labeled = TensorDataset3(torch.randn(args.labeled, 3, 32, 32, generator=g), torch.randint(0, 10, (args.labeled,), generator=g))
    reference = TensorDataset3(torch.randn(args.reference, 3, 32, 32, generator=g), torch.randint(0, 10, (args.reference,), generator=g))
    loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=args.batch_size)
    if args.train_epochs:
        train(model, ClassificationAdapter(), labeled, TrainSettings(epochs=args.train_epochs, lr=0.05, batch_size=64),
              device=device)
    params = select_parameters(model, "weights")
    v = reference_gradient(model, adapter, loader(reference), params, device)
    op = HessianOperator(model, adapter, params, collect_batches(adapter, loader(labeled), device))
    print(describe(device), f"| {args.model}, {op.dim:,} parameters, labeled {args.labeled}, damping {args.damping:g}")

    start = time.perf_counter()
    exact = CG(damping=args.damping, tol=1e-8, max_iter=200).solve(op, v)
    print(f"converged CG: {exact.info['iterations']} iterations, residual {exact.info['residual']:.1e}, {time.perf_counter() - start:.1f} s (not timed below)")
    cosine = lambda x: float(F.cosine_similarity(x.double().flatten(), exact.s_test.double().flatten(), dim=0))

    start = time.perf_counter()
    ref = LiSSA(damping=args.damping, scale=1e4, depth=args.depth, repeats=args.repeats, batch_size=1).solve(op, v)
    ref_seconds = time.perf_counter() - start
    target = cosine(ref.s_test)
    print(f"reference LiSSA ({args.repeats} x {args.depth} steps, batch 1): {ref_seconds:.1f} s, cosine to converged {target:.6f}")

    trace = []
    start = time.perf_counter()
    CG(damping=args.damping, callback=lambda it, x: trace.append((it, time.perf_counter() - start, cosine(x)))).solve(op, v)
    reached = next(((it, t, c) for it, t, c in trace if c >= target), None)
    for it, t, c in trace:
        print(f"default CG iteration {it}: {t:7.1f} s, cosine {c:.6f}")
    identity = cosine(v)
    print(f"identity (gradient similarity) cosine: {identity:.6f}")
    if reached is None:
        print("default CG never reached the reference cosine")
        speedup = None
    else:
        speedup = ref_seconds / reached[1]
        print(f"time to reach cosine {target:.6f}: reference {ref_seconds:.1f} s, default CG {reached[1]:.1f} s "
              f"(iteration {reached[0]}) -> {speedup:.1f}x faster")
    summary = {"bench": "stest", "device": str(device), "model": args.model, "parameters": op.dim, "damping": args.damping,
               "labeled": args.labeled, "reference_seconds": ref_seconds, "reference_cosine": target,
               "default_seconds_to_reach": None if reached is None else reached[1],
               "default_iterations_to_reach": None if reached is None else reached[0],
               "identity_cosine": identity, "speedup": speedup}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
