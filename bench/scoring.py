"""Pool-scoring throughput: forward-only vs ISAL (all weights, last layer) vs the per-sample loop.

    python -m bench.scoring [--pool 2048] [--loop 256] [--repeats 5] [--device auto]

One model (ResNet-18, CIFAR variant, eval mode), a pool of random 32x32 images. Every
path runs once whole as a warm-up (its peak memory is measured then), then `repeats`
rounds time each path again, in alternating order (forward, all, last, loop, then loop,
last, all, forward, ...): each ratio is taken within a round and reported as the median
and range over the rounds. Prints them, writes docs/results/bench/scoring-<device>.json.
"""
from __future__ import annotations

import argparse
import copy
import json

import torch
from torch.utils.data import DataLoader

from isal_core.data.images import TensorDataset3
from isal_core.influence.params import select_parameters
from isal_core.influence.pool import influence, influence_loop
from isal_core.nets.models import build_model
from isal_core.tasks.classification import ClassificationAdapter
from isal_core.utils.runtime import resolve_device

from .common import describe, interleaved, ratio_spread, timed, write_result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=2048)
    ap.add_argument("--loop", type=int, default=256, help="samples timed for the per-sample loop")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", default="resnet18_cifar")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds after the warm-up")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="model and inputs in channels-last layout (faster convolutions), for every path")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, 10).to(device).eval()
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    adapter = ClassificationAdapter()
    pool = TensorDataset3(torch.randn(args.pool, 3, 32, 32).contiguous(memory_format=layout),
                          torch.full((args.pool,), -1))
    loader = DataLoader(pool, batch_size=args.batch_size)
    print(describe(device), f"| {args.model}, pool {args.pool}, batch {args.batch_size}, "
                            f"channels_last {args.channels_last}")

    def forward_only():
        with torch.no_grad():
            for x, _, _ in loader:
                model(x.to(device))

    results = {}

    def warm(name, fn, n):
        """The warm-up pass: whole, once; its peak memory is the path's."""
        out, seconds, peak = timed(fn, device)
        results[name] = {"peak_mb": peak, "warmup_images_per_s": n / seconds}
        print(f"warm-up {name:<22} {n / seconds:9.1f} images/s  peak {peak:8.0f} MB")
        return out

    sets = {w: select_parameters(model, w) for w in ("weights", "last")}
    directions = {w: torch.randn(sum(p.numel() for _, p in ps), device=device) for w, ps in sets.items()}
    subset = torch.utils.data.Subset(pool, range(args.loop))
    paths = {
        "forward": (forward_only, args.pool),
        "isal_all_weights": (lambda: influence(model, adapter, loader, directions["weights"], sets["weights"],
                                               device=device), args.pool),
        "isal_last_layer": (lambda: influence(model, adapter, loader, directions["last"], sets["last"], device=device),
                            args.pool),
        "reference_loop": (lambda: influence_loop(model, adapter, subset, directions["weights"], sets["weights"],
                                                  device=device), args.loop),
    }
    outputs = {name: warm(name, fn, n) for name, (fn, n) in paths.items()}
    all_scores, loop_scores = outputs["isal_all_weights"], outputs["reference_loop"]
    double = DataLoader(TensorDataset3(torch.cat([pool.x, pool.x]), torch.cat([pool.y, pool.y])),
                        batch_size=args.batch_size)
    warm("isal_last_layer_2x_pool", lambda: influence(model, adapter, double, directions["last"], sets["last"],
                                                      device=device, num_samples=2 * args.pool), 2 * args.pool)
    seconds = interleaved({name: fn for name, (fn, _) in paths.items()}, args.repeats, device)
    rates = {name: [paths[name][1] / s for s in seconds[name]] for name in paths}
    for name in paths:
        print(f"{name:<22} median {sorted(rates[name])[len(rates[name]) // 2]:9.1f} images/s over {args.repeats} "
              f"rounds ({min(rates[name]):.1f} .. {max(rates[name]):.1f})")
    agreement = float((all_scores[: args.loop] - loop_scores).norm() / loop_scores.norm())
    # Who is closer to the exact value? A float64 copy of the model scores the first samples.
    n64 = min(32, args.loop)
    model64 = copy.deepcopy(model).double()
    params64 = select_parameters(model64, "weights")
    exact = influence(model64, adapter, DataLoader(TensorDataset3(pool.x[:n64].double(), pool.y[:n64]), batch_size=n64),
                      directions["weights"].double(), params64, device=device).double()
    err = lambda x: float((x[:n64].double() - exact).norm() / exact.norm())  # noqa: E731
    error64 = {"isal_all_weights": err(all_scores), "reference_loop": err(loop_scores)}

    ratios = {
        "all_over_forward": ratio_spread(rates["isal_all_weights"], rates["forward"]),
        "last_over_forward": ratio_spread(rates["isal_last_layer"], rates["forward"]),
        "all_over_loop": ratio_spread(rates["isal_all_weights"], rates["reference_loop"]),
    }
    for k, v in ratios.items():
        print(f"ratio {k:<20} median {v['median']:6.2f} (range {v['min']:.2f} .. {v['max']:.2f}, {v['rounds']} rounds)")
    growth = results["isal_last_layer_2x_pool"]["peak_mb"] / results["isal_last_layer"]["peak_mb"]
    print(f"peak memory, pool x2 over pool x1 (last layer): {growth:.2f}")
    print(f"relative difference ISAL vs loop on {args.loop} samples: {agreement:.2e}")
    print(f"relative error against float64 on {n64} samples: ISAL {error64['isal_all_weights']:.2e}, "
          f"loop {error64['reference_loop']:.2e}")
    summary = {"bench": "scoring", "device": str(device), "model": args.model, "pool": args.pool, "loop": args.loop,
               "repeats": args.repeats, "images_per_s": {k: [round(r, 1) for r in v] for k, v in rates.items()},
               "ratios": ratios, "peak_mb": {k: round(v["peak_mb"]) for k, v in results.items()},
               "memory_growth_2x_pool": round(growth, 3), "loop_agreement": agreement, "error_vs_float64": error64}
    print(json.dumps(summary))
    write_result(f"scoring-{device.type}", "scoring", summary, argv)
    return summary


if __name__ == "__main__":
    main()
