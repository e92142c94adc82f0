"""Pool-scoring throughput: forward-only vs ISAL (all weights, last layer) vs the per-sample loop.

    python -m bench.scoring [--pool 2048] [--loop 256] [--device auto]

One run, one model (ResNet-18, CIFAR variant, eval mode), a pool of random 32x32
images; prints images/s, their ratios and peak memory, then one line of JSON.
"""
from __future__ import annotations

import argparse
import copy
import json

import torch
from torch.utils.data import DataLoader

from isal_core.adapter import ClassificationAdapter
from isal_core.data import TensorDataset3
from isal_core.models import build_model
from isal_core.params import select_parameters
from isal_core.scoring import influence, influence_loop
from isal_core.runtime import resolve_device

from .common import describe, timed


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=2048)
    ap.add_argument("--loop", type=int, default=256, help="samples timed for the per-sample loop")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", default="resnet18_cifar")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="model and inputs in channels-last layout (faster convolutions), for every path")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, 10).to(device).eval()
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    adapter = ClassificationAdapter()
    pool = TensorDataset3(torch.randn(args.pool, 3, 32, 32).contiguous(memory_format=layout), torch.full((args.pool,), -1))
    loader = DataLoader(pool, batch_size=args.batch_size)
    print(describe(device), f"| {args.model}, pool {args.pool}, batch {args.batch_size}, channels_last {args.channels_last}")

    def forward_only():
        with torch.no_grad():
            for x, _, _ in loader:
                model(x.to(device))

    results = {}

    def record(name, fn, n):
        out, seconds, peak = timed(fn, device)
        results[name] = {"images_per_s": n / seconds, "seconds": seconds, "peak_mb": peak}
        print(f"{name:<22} {n / seconds:9.1f} images/s  {seconds:8.2f} s  peak {peak:8.0f} MB")
        return out

    sets = {w: select_parameters(model, w) for w in ("weights", "last")}
    directions = {w: torch.randn(sum(p.numel() for _, p in ps), device=device) for w, ps in sets.items()}
    warm = next(iter(loader))[0].to(device)
    with torch.no_grad():  # warm up kernels and allocator
        model(warm)
        model(warm)
    record("forward", forward_only, args.pool)
    all_scores = record("isal_all_weights", lambda: influence(model, adapter, loader, directions["weights"], sets["weights"], device=device), args.pool)
    record("isal_last_layer", lambda: influence(model, adapter, loader, directions["last"], sets["last"], device=device), args.pool)
    double = DataLoader(TensorDataset3(torch.cat([pool.x, pool.x]), torch.cat([pool.y, pool.y])), batch_size=args.batch_size)
    record("isal_last_layer_2x_pool", lambda: influence(model, adapter, double, directions["last"], sets["last"], device=device, num_samples=2 * args.pool), 2 * args.pool)
    subset = torch.utils.data.Subset(pool, range(args.loop))
    loop_scores = record("reference_loop", lambda: influence_loop(model, adapter, subset, directions["weights"], sets["weights"], device=device), args.loop)
    agreement = float((all_scores[: args.loop] - loop_scores).norm() / loop_scores.norm())
    # Who is closer to the exact value? A float64 copy of the model scores the first samples.
    n64 = min(32, args.loop)
    model64 = copy.deepcopy(model).double()
    params64 = select_parameters(model64, "weights")
    exact = influence(model64, adapter, DataLoader(TensorDataset3(pool.x[:n64].double(), pool.y[:n64]), batch_size=n64),
                      directions["weights"].double(), params64, device=device).double()
    err = lambda x: float((x[:n64].double() - exact).norm() / exact.norm())
    error64 = {"isal_all_weights": err(all_scores), "reference_loop": err(loop_scores)}

    rate = {k: v["images_per_s"] for k, v in results.items()}
    ratios = {
        "all_over_forward": rate["isal_all_weights"] / rate["forward"],
        "last_over_forward": rate["isal_last_layer"] / rate["forward"],
        "all_over_loop": rate["isal_all_weights"] / rate["reference_loop"],
    }
    for k, v in ratios.items():
        print(f"ratio {k:<20} {v:6.2f}")
    growth = results["isal_last_layer_2x_pool"]["peak_mb"] / results["isal_last_layer"]["peak_mb"]
    print(f"peak memory, pool x2 over pool x1 (last layer): {growth:.2f}")
    print(f"relative difference ISAL vs loop on {args.loop} samples: {agreement:.2e}")
    print(f"relative error against float64 on {n64} samples: ISAL {error64['isal_all_weights']:.2e}, "
          f"loop {error64['reference_loop']:.2e}")
    summary = {"bench": "scoring", "device": str(device), "model": args.model, "pool": args.pool,
               "images_per_s": rate, "ratios": ratios, "peak_mb": {k: v["peak_mb"] for k, v in results.items()},
               "memory_growth_2x_pool": growth, "loop_agreement": agreement, "error_vs_float64": error64}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
