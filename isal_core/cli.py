"""The engine's command line: rank a pool (`select`), review labels (`review`), find duplicates, leaks and
outliers (`hygiene`), simulate active learning.

    isal select --labeled data/labeled --reference data/val --pool data/unlabeled \
                --epochs 30 --budget 100 --out ranked.csv
    isal hygiene --data data/unlabeled --reference data/val --out hygiene/
    isal simulate --config configs/cifar10-cpu.json

Every engine setting is a flag derived from the settings schema (isal_core.settings).
The installed `isal` command is assembled on the backend's side (backend.tools.cli), which
adds `simulate --label-studio`; `python -m isal_core.cli` is the engine alone.
Errors a user can fix (IsalError) print `isal: error: ...` and exit with 2; anything
else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .data.cifar10 import cifar10_root
from .data.images import load_records
from .data.transforms import CIFAR_MEAN, CIFAR_STD
from .errors import DataError, IsalError
from .flags import add_arguments, given
from .influence.review import SIGNALS, review_order
from .learner import Learner
from .selection import INFLUENCE_STRATEGIES, STRATEGIES, check_budget
from .selection.hygiene import find_hygiene, find_leaks, thumbnail
from .settings import EngineSettings, TrainSettings, validate
from .simulation.config import SimulationConfig, load_config
from .simulation.dataset import only
from .simulation.run import simulate
from .tasks.frozen import classification_adapter
from .train.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from .utils import distributed
from .utils.atomic import atomic_write

log = logging.getLogger("isal")

SimulateRunner = Callable[[SimulationConfig, argparse.Namespace], Path]


def _select_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("select", help="rank an unlabeled pool, most useful to label first, into a CSV")
    p.add_argument("--labeled", required=True,
                   help="labeled images: folder of class subfolders, zip[/prefix], or CSV (path,label)")
    p.add_argument("--pool", required=True, help="unlabeled images: folder, zip[/prefix], or CSV (path)")
    p.add_argument("--reference", help="reference set R with true labels (default: the labeled set, ISAL_v3)")
    p.add_argument("--checkpoint", help="a trained checkpoint (isal_core format); else train on --labeled")
    p.add_argument("--save-checkpoint", help="where to save the model trained here")
    p.add_argument("--strategy", default="isal", choices=STRATEGIES)
    p.add_argument("--budget", type=int, help="how many to select (marked in the CSV); default: rank only")
    p.add_argument("--seed", type=int, default=0, help="seed of training, the Hessian subset and the solver")
    p.add_argument("--out", default="ranked.csv")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(p.add_argument_group("engine settings"), EngineSettings)
    return p


def select(args: argparse.Namespace) -> int:
    settings = given(args, EngineSettings)
    classes = None
    if args.checkpoint:
        _, meta = read_checkpoint(args.checkpoint)  # the model's own arch, classes and size win
        classes = meta.get("classes")
        settings.update({k: meta[k] for k in ("arch", "image_size", "weights", "head") if meta.get(k) is not None})
        settings["mode"] = "frozen" if meta.get("adapter") == "frozen" else "finetune"
    settings = validate(EngineSettings, settings, "the command line")
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

    distributed.init_from_env(settings.device)  # under torchrun: the pool is scored in shards
    code = _select_round(args, settings, classes, labeled_records, pool_records, reference_records)
    distributed.finish()  # (after a failure torchrun stops the group instead)
    return code


def _select_round(args, settings, classes, labeled_records, pool_records, reference_records) -> int:
    adapter = classification_adapter(settings, len(classes), settings.device, settings.batch_size)
    learner = Learner(adapter, settings, args.seed, progress=not args.quiet)
    model = load_checkpoint(args.checkpoint, learner.device, adapter)[0] if args.checkpoint else None
    result = learner.round(args.strategy, adapter.dataset(labeled_records), adapter.dataset(pool_records),
                           adapter.dataset(reference_records), args.budget, model=model,
                           train_set=adapter.dataset(labeled_records, train=True))
    if not learner.main_process:
        return 0  # rank 0 gathered the scores and writes the results
    if model is None and args.save_checkpoint:
        save_checkpoint(args.save_checkpoint, result.model, {**adapter.to_meta(), "classes": classes})
    column = "influence" if args.strategy in INFLUENCE_STRATEGIES else "score"
    write_ranking(args.out, pool_records, result.ranking, column, args.budget)
    print(f"ranked {len(pool_records)} pool images with {args.strategy} -> {args.out}"
          + (f" ({learner.world_size} processes)" if learner.world_size > 1 else ""))
    return 0


def write_ranking(path: str, records, ranking, column: str, budget: int | None) -> None:
    """CSV of the whole pool in ranking order: rank 1 = label first."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", column, "rank", "selected", "path"])
        for rank, i in enumerate(ranking.order.tolist(), start=1):
            selected = budget is not None and rank <= budget
            writer.writerow([records[i].id, f"{float(ranking.scores[i]):.9g}", rank, int(selected), records[i].path])


def _pretrain_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pretrain", help="train a backbone on some classes, for frozen features on others")
    p.add_argument("--data", help="folder or zip with train/<class>/ and test/<class>/ (default: CIFAR-10)")
    p.add_argument("--classes", required=True, help="comma list of the class folders to train on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint to write (then: --weights <out>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(p.add_argument_group("engine settings"), TrainSettings)
    for name in ("arch", "image_size", "device", "workers"):
        field = EngineSettings.model_fields[name]
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, help=field.description,
                       type=int if field.annotation is int else str)
    return p


def pretrain(args: argparse.Namespace) -> int:
    """A classifier on the chosen classes, saved with its preprocessing: a backbone for `--weights`."""
    settings = validate(EngineSettings, {**given(args, EngineSettings), "mode": "finetune"}, "the command line")
    root = (args.data or cifar10_root()).rstrip("/")
    keep = [c.strip() for c in args.classes.split(",") if c.strip()]
    classes, train_records = load_records(f"{root}/train")
    _, test_records = load_records(f"{root}/test", classes)
    classes, train_records, test_records = only(classes, keep, train_records, test_records, root)
    adapter = classification_adapter(settings, len(classes))
    learner = Learner(adapter, settings, args.seed, progress=not args.quiet)
    model = learner.fit(adapter.dataset(train_records, train=True))
    accuracy = learner.evaluate(model, adapter.dataset(test_records))
    size = settings.image_size
    preprocessing = {"size": size, "resize": size, "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    save_checkpoint(args.out, model, {**adapter.to_meta(), "classes": classes, "preprocessing": preprocessing,
                                      "test_accuracy": accuracy, "train_images": len(train_records)})
    print(f"trained {settings.arch} on {len(train_records)} images of {', '.join(classes)}: test accuracy "
          f"{accuracy:.4f} -> {args.out}")
    return 0


def _review_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("review", help="list the labeled images whose labels are most likely wrong, as a CSV")
    p.add_argument("--data", required=True, help="labeled images: folder of class subfolders, zip[/prefix], or CSV "
                                                 "(path,label)")
    p.add_argument("--reference", help="a trusted labeled set R (default: the data itself)")
    p.add_argument("--signal", choices=SIGNALS[:2] + SIGNALS[3:],
                   help="rank by influence on R with the given label, the model's loss on it, or both (default "
                        "with --reference; without one R would be the training set itself, whose loss gradient "
                        "is about 0 at the optimum, so the default is loss)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="review.csv")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(p.add_argument_group("engine settings"), EngineSettings)
    return p


def review(args: argparse.Namespace) -> int:
    """`isal review`: train on the data, then rank every image by how likely its label is wrong."""
    settings = validate(EngineSettings, given(args, EngineSettings), "the command line")
    classes, records = load_records(args.data, labeled=True)
    reference = load_records(args.reference, classes, labeled=True)[1] if args.reference else None
    adapter = classification_adapter(settings, len(classes), settings.device, settings.batch_size)
    learner = Learner(adapter, settings, args.seed, progress=not args.quiet)
    _, found = learner.review(adapter.dataset(records), reference and adapter.dataset(reference),
                              train_set=adapter.dataset(records, train=True))
    signal = args.signal or ("combined" if args.reference else "loss")
    scores = found.scores(signal)
    with atomic_write(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "path", "label", "model_label", signal, "influence", "loss"])
        for rank, i in enumerate(review_order(found, signal), start=1):
            numbers = (scores[i], found.influence[i], found.loss[i])
            writer.writerow([rank, records[i].path, classes[records[i].label], classes[found.predictions[i]],
                             *(f"{float(x):.6g}" for x in numbers)])
    print(f"reviewed {len(records)} labeled images -> {args.out} (most suspicious first)")
    return 0


def _hygiene_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("hygiene", help="near-duplicate groups, leaks into a reference set and outliers, as CSVs")
    p.add_argument("--data", required=True, help="images: folder (class subfolders or not), zip[/prefix], or CSV")
    p.add_argument("--reference", help="a reference (test) set: its images' near-duplicates in --data are leaks")
    p.add_argument("--out", default="hygiene", help="folder for duplicates.csv, leaks.csv, outliers.csv")
    add_arguments(p.add_argument_group("engine settings"), EngineSettings)
    return p


def hygiene(args: argparse.Namespace) -> int:
    """`isal hygiene`: the frozen embeddings of every image, then isal_core.selection.hygiene's groups, leaks and
    outliers (the thresholds are in its docstring), each written as a CSV of paths."""
    settings = validate(EngineSettings, given(args, EngineSettings), "the command line")
    records = load_records(args.data, labeled=False)[1]
    reference = load_records(args.reference, labeled=False)[1] if args.reference else []
    every = records + reference
    if not every:
        raise DataError(f"no images found in {args.data}")
    roles = ["data"] * len(records) + ["reference"] * len(reference)
    adapter = classification_adapter(settings.model_copy(update={"mode": "frozen"}), 2, settings.device,
                                     settings.batch_size)
    found = find_hygiene(adapter.dataset(every).x, lambda row: thumbnail(every[row].path))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    leaks = [(every[leak["reference"]].path, every[c].path, roles[c])
             for leak in find_leaks(found, roles) for c in leak["copies"]]
    tables = {"duplicates.csv": (["group", "path", "role"], [(g, every[r].path, roles[r])
                                                           for g, rows in enumerate(found.groups, 1) for r in rows]),
              "leaks.csv": (["reference", "copy", "role"], leaks),
              "outliers.csv": (["path", "role", "distance", "threshold"], [
                  (every[r].path, roles[r], f"{found.distance[r]:.4f}", f"{found.threshold:.4f}")
                  for r in found.outliers])}
    for name, (header, rows) in tables.items():
        with atomic_write(out / name, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    print(f"{len(every)} images: {len(found.groups)} near-duplicate groups, {len(tables['leaks.csv'][1])} leaked "
          f"copies, {len(found.outliers)} outliers -> {out}/")
    return 0


def _simulate_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("simulate", help="offline active-learning simulation: accuracy vs labels per strategy")
    p.add_argument("--config", help="JSON protocol file (configs/*.json); flags override it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(p, SimulationConfig, exclude=("progress",))
    return p


def run_simulate(args: argparse.Namespace, runner: SimulateRunner | None = None) -> int:
    """`isal simulate`: the protocol from --config and flags, run offline or by `runner`."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    config = load_config(args.config, **given(args, SimulationConfig), progress=False if args.quiet else None)
    try:
        with logging_redirect_tqdm():
            out = runner(config, args) if runner else simulate(config)
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to resume from {config.out}")
        return 130
    print(f"results: {out / 'results.csv'}\ncurves:  {out / 'curves.png'}\nsavings: {out / 'savings.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `isal` parser; `parser.commands` maps each command to its subparser (to extend it)."""
    parser = argparse.ArgumentParser(prog="isal", description="Influence Selection for Active Learning")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = {"select": _select_parser(sub), "simulate": _simulate_parser(sub),
                       "pretrain": _pretrain_parser(sub), "review": _review_parser(sub),
                       "hygiene": _hygiene_parser(sub)}
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None,
         simulate_runner: SimulateRunner | None = None) -> int:
    args = (parser or build_parser()).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Label Studio request drowns the rest
    try:
        if args.command == "simulate":
            return run_simulate(args, simulate_runner)
        return {"pretrain": pretrain, "review": review, "select": select, "hygiene": hygiene}[args.command](args)
    except IsalError as exc:
        print(f"isal: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
