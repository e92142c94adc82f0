"""`isal` command line: rank an unlabeled pool (`isal select`) and run the benchmarks.

    isal select --labeled data/labeled --reference data/val --pool data/unlabeled \
                --epochs 30 --budget 100 --out ranked.csv
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys


from . import simulate
from .adapter import ClassificationAdapter
from .data import DataError, ImageDataset, classification_transform, load_records
from .models import build_model, model_choices
from .params import PARAMETER_SETS
from .stest import REFERENCE_DAMPING, SOLVERS, SolverError
from .strategies import STRATEGIES, SelectionContext, check_budget, make_strategy
from .training import TrainConfig, load_checkpoint, resolve_device, save_checkpoint, seed_everything, train_classifier

log = logging.getLogger("isal")


def _select_parser(sub) -> None:
    p = sub.add_parser("select", help="rank an unlabeled pool, most useful to label first, into a CSV")
    p.add_argument("--labeled", required=True, help="labeled images: folder of class subfolders, zip[/prefix], or CSV (path,label)")
    p.add_argument("--pool", required=True, help="unlabeled images: folder, zip[/prefix], or CSV (path)")
    p.add_argument("--reference", help="reference set R with true labels (default: the labeled set, ISAL_v3)")
    p.add_argument("--checkpoint", help="a trained checkpoint (isal_core format); else train on --labeled")
    p.add_argument("--save-checkpoint", help="where to save the model trained here")
    p.add_argument("--arch", default="small_cnn", help=f"model when training: {', '.join(model_choices()[:4])} or any torchvision classifier")
    p.add_argument("--epochs", type=int, default=30, help="training budget when no --checkpoint (paper: 200)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--strategy", default="isal", choices=STRATEGIES)
    p.add_argument("--solver", default="cg", choices=sorted(SOLVERS))
    p.add_argument("--damping", type=float, default=REFERENCE_DAMPING, help="lambda in (H + lambda I); reference code: 100")
    p.add_argument("--lissa-scale", type=float, default=1e4)
    p.add_argument("--lissa-depth", type=int, default=250)
    p.add_argument("--lissa-repeats", type=int, default=4)
    p.add_argument("--lissa-batch-size", type=int, default=1)
    p.add_argument("--params", default="weights", help=f"{', '.join(PARAMETER_SETS)} or comma-separated parameter names")
    p.add_argument("--top-k", type=int, default=1, help="pseudo-label classes in the expected gradient (1 = argmax)")
    p.add_argument("--hessian-samples", type=int, default=1024, help="labeled samples that define H")
    p.add_argument("--budget", type=int, help="how many to select (marked in the CSV); default: rank only")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="ranked.csv")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def select(args) -> int:
    device = resolve_device(args.device)
    progress = not args.quiet
    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint, device)
        classes = meta.get("classes")
        image_size = int(meta.get("image_size", args.image_size))
    else:
        model, meta, classes, image_size = None, {}, None, args.image_size
    classes, labeled_records = load_records(args.labeled, classes, labeled=True)
    _, pool_records = load_records(args.pool, classes, labeled=False)
    if args.reference:
        _, reference_records = load_records(args.reference, classes, labeled=True)
    else:
        reference_records = labeled_records
        log.warning("no --reference given: using the labeled set as the reference set (ISAL_v3)")
    if not pool_records:
        raise DataError(f"the pool {args.pool} holds no images")
    if args.budget is not None:
        check_budget(args.budget, len(pool_records))

    transform = classification_transform(image_size)
    labeled = ImageDataset(labeled_records, transform)
    if model is None:
        seed_everything(args.seed)  # the initial weights too, not only the shuffling
        model = build_model(args.arch, len(classes))
        config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                             device=str(device), num_workers=args.workers)
        train_classifier(model, ImageDataset(labeled_records, classification_transform(image_size, train=True)), config, progress)
        meta = {"arch": args.arch, "num_classes": len(classes), "classes": classes, "image_size": image_size}
        if args.save_checkpoint:
            save_checkpoint(args.save_checkpoint, model, meta)

    ctx = SelectionContext(
        model=model, adapter=ClassificationAdapter(), pool=ImageDataset(pool_records, transform), labeled=labeled,
        reference=ImageDataset(reference_records, transform), device=device, batch_size=args.batch_size,
        num_workers=args.workers, budget=args.budget, progress=progress)
    strategy = make_strategy(
        args.strategy, seed=args.seed, solver=args.solver, params=args.params, top_k=args.top_k,
        hessian_samples=args.hessian_samples, damping=args.damping, scale=args.lissa_scale,
        depth=args.lissa_depth, repeats=args.lissa_repeats, batch_size=args.lissa_batch_size)
    ranking = strategy.rank(ctx)
    column = "influence" if args.strategy in ("isal", "gradsim") else "score"
    write_ranking(args.out, pool_records, ranking, column, args.budget)
    print(f"ranked {len(pool_records)} pool images with {args.strategy} -> {args.out}")
    return 0


def write_ranking(path: str, records, ranking, column: str, budget: int | None) -> None:
    """CSV of the whole pool in ranking order: rank 1 = label first."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", column, "rank", "selected", "path"])
        for rank, i in enumerate(ranking.order.tolist(), start=1):
            selected = budget is not None and rank <= budget
            writer.writerow([records[i].id, f"{float(ranking.scores[i]):.9g}", rank, int(selected), records[i].path])
    os.replace(tmp, path)


def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark: scoring or stest (extra args pass through)")
    p.add_argument("name", choices=["scoring", "stest"])
    p.add_argument("rest", nargs=argparse.REMAINDER)


def _simulate_parser(sub) -> None:
    p = sub.add_parser("simulate", help="offline active-learning simulation: accuracy vs labels per strategy")
    simulate.add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isal", description="Influence Selection for Active Learning")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    _select_parser(sub)
    _bench_parser(sub)
    _simulate_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Label Studio request drowns the rest
    if args.command == "bench":
        import importlib

        importlib.import_module(f"bench.{args.name}").main(args.rest)
        return 0
    try:
        return simulate.run(args) if args.command == "simulate" else select(args)
    except (DataError, SolverError, ValueError, FloatingPointError) as exc:
        print(f"isal: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
