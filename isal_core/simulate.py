"""Offline active-learning simulation: the paper's experiment, on any labeled dataset.

The dataset has `train/<class>/*` and `test/<class>/*` (a folder or a zip). For each seed,
a random initial set of the train split is labeled (the same for every strategy, as in
the paper); each round trains a model from scratch on the labeled set, measures its test
accuracy, lets the strategy rank the rest of the pool, and "labels" the top `step` by
revealing their true labels.

Training and ranking depend on the labeled *set*, never on the order it was labeled in:
both see it sorted by train-split index, and both are seeded with the run's seed (every
round alike). That is what the Label Studio backend does too (one ISAL_SEED; tasks in id
order, which the headless Label Studio simulation makes the train-split order), so a run
through Label Studio reproduces the offline one task for task.

The test split is cut once (split seed 0, the same for every seed and strategy) into
ISAL's reference set R (`reference_size` images, with labels, as the paper's code uses a
labeled held-out set) and the evaluation set (the rest, or `test_subset` of it): the
accuracy is never measured on the images R steers the selection with.

`Simulation` holds the protocol's moves (train, evaluate, rank, select) so that another
driver (a headless Label Studio simulation) gets the same order from the same state;
`simulate` adds the loop and the run directory (see simstore) that makes it resumable.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveInt, field_validator,
                      model_validator)
from torch import nn
from tqdm.auto import tqdm

from .adapter import ClassificationAdapter
from .data import DataError, ImageDataset, ImageRecord, classification_transform, load_records
from .models import build_model
from .simreport import savings_table, write_report
from .simstore import Checkpoints, ResultsFile, RunState, check_config
from .stest import REFERENCE_DAMPING, SOLVERS
from .strategies import STRATEGIES, SelectionContext, Strategy, check_budget, make_strategy
from .training import TrainConfig, evaluate, resolve_device, seed_everything, train_classifier

__all__ = ["SIM_STRATEGIES", "Simulation", "SimulationConfig", "SimulationData", "load_config", "savings_table",
           "simulate"]

log = logging.getLogger(__name__)

#: isal_l1: R = the initial labeled set (the paper's ISAL_v2); isal_labeled: R = the current one (ISAL_v3).
SIM_STRATEGIES = STRATEGIES + ("isal_l1", "isal_labeled")
_USES_R = ("isal", "gradsim")
SPLIT_SEED = 0  # cuts the test split into R and the evaluation set, for every seed alike
REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10-jpg.zip"
#: Settings that may change between invocations on one run directory; the rest must not.
RESUMABLE = {"data", "strategies", "seeds", "rounds", "device", "workers", "out", "progress"}


class SimulationConfig(BaseModel):
    """One simulation protocol. The defaults are CPU-sized (the shape of configs/cifar10-cpu.json
    without its subsets); configs/ holds the calibrated CPU protocol and the paper's."""

    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(None, description="folder or zip with train/ and test/; default: shared CIFAR-10 zip")
    strategies: list[str] = Field(default_factory=lambda: ["random", "coreset", "gradsim", "isal"])
    initial: PositiveInt = 500
    step: PositiveInt = 500
    rounds: PositiveInt = Field(6, description="trained models per run, the initial one included")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    arch: str = "small_cnn"
    epochs: PositiveInt = 10
    lr: float = Field(0.1, gt=0)
    batch_size: PositiveInt = 128
    image_size: PositiveInt = 32
    pool_subset: PositiveInt | None = Field(None, description="train images the run may label (seeded subset)")
    test_subset: PositiveInt | None = Field(None, description="evaluation images (seeded subset of test minus R)")
    reference_size: NonNegativeInt = Field(1000, description="ISAL's reference set R, taken from the test split")
    solver: str = "cg"
    damping: NonNegativeFloat = REFERENCE_DAMPING
    params: str = "weights"
    top_k: PositiveInt = 1
    hessian_samples: NonNegativeInt = Field(1024, description="labeled samples that define H; 0 = all")
    device: str = "auto"
    workers: NonNegativeInt = 0
    out: str = "runs/simulate"
    progress: bool = True

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, names):
        unknown = [n for n in names if n not in SIM_STRATEGIES]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"strategies must be distinct names from {', '.join(SIM_STRATEGIES)}; got {names}")
        return names

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds):
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers; got {seeds}")
        return seeds

    @field_validator("solver")
    @classmethod
    def _known_solver(cls, name):
        if name not in SOLVERS:
            raise ValueError(f"unknown solver {name!r}; choose from {', '.join(sorted(SOLVERS))}")
        return name

    @model_validator(mode="after")
    def _reference_when_needed(self):
        if self.reference_size == 0 and any(s in _USES_R for s in self.strategies):
            raise ValueError(f"{', '.join(s for s in self.strategies if s in _USES_R)} need a reference set: "
                             f"reference_size must be at least 1")
        return self

    def identity(self) -> dict:
        """The settings the numbers depend on (checked when a run directory is reused)."""
        return self.model_dump(exclude=RESUMABLE)


def load_config(path: str | None = None, **overrides) -> SimulationConfig:
    """A JSON protocol file (or the defaults), with `overrides` that are not None on top.
    Keys starting with "_" are notes for the reader and are ignored."""
    values = {}
    if path:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read config {path}: {exc}") from exc
        values = {k: v for k, v in values.items() if not k.startswith("_")}  # "_note": comments
        values.setdefault("out", f"runs/{Path(path).stem}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SimulationConfig(**values)


# ---------------------------------------------------------------------------
# data


@dataclass
class SimulationData:
    """The dataset's records and the fixed cut of its test split into R and evaluation."""

    root: str
    classes: list[str]
    train: list[ImageRecord]
    test: list[ImageRecord]
    reference: list[int]  # test-split indices: ISAL's R
    evaluation: list[int]  # test-split indices: where the metric is measured

    @classmethod
    def load(cls, config: SimulationConfig) -> SimulationData:
        root = (config.data or default_data()).rstrip("/")
        classes, train = load_records(f"{root}/train")
        if len(classes) < 2:
            raise DataError(f"{root}/train has a single class ({classes[0]!r}): a classifier needs at least two")
        _, test = load_records(f"{root}/test", classes)
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
        reference, rest = order[:config.reference_size], order[config.reference_size:]
        evaluation = rest[:config.test_subset] if config.test_subset else rest
        if config.test_subset and len(rest) < config.test_subset or not evaluation:
            raise DataError(f"{root}/test holds {len(test)} images: too few for a reference set of "
                            f"{config.reference_size} plus an evaluation set of {config.test_subset or 'at least 1'}")
        return cls(root, classes, train, test, reference, evaluation)

    def fingerprint(self) -> dict:
        """Which dataset this is, independent of where it lies: classes, sizes, a hash of ids and labels."""
        digest = hashlib.sha1()
        for split in (self.train, self.test):
            for r in split:
                digest.update(f"{r.id}\t{r.label}\n".encode())
        return {"classes": self.classes, "train": len(self.train), "test": len(self.test), "sha1": digest.hexdigest()}


def default_data() -> str:
    """The shared CIFAR-10 zip next to the repository, else CIFAR-10 downloaded to ~/.cache."""
    if SHARED_CIFAR10.is_file():
        return str(SHARED_CIFAR10)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "isal"
    return str(download_cifar10(cache))


def download_cifar10(cache: Path) -> Path:
    """torchvision's CIFAR-10, written once as train/<class>/*.png and test/<class>/*.png."""
    from torchvision.datasets import CIFAR10

    folder = cache / "cifar10-png"
    if (folder / ".complete").exists():
        return folder
    for split, train in (("train", True), ("test", False)):
        dataset = CIFAR10(str(cache / "torchvision"), train=train, download=True)
        for i, (image, label) in enumerate(tqdm(dataset, desc=f"writing CIFAR-10 {split}")):
            target = folder / split / dataset.classes[label]
            target.mkdir(parents=True, exist_ok=True)
            image.save(target / f"{i:05d}.png")
    (folder / ".complete").touch()
    return folder


# ---------------------------------------------------------------------------
# the protocol's moves


def sim_strategy(name: str, config: SimulationConfig, seed: int) -> Strategy:
    """A strategy by simulation name (isal_l1 / isal_labeled are ISAL with another R)."""
    base = "isal" if name.startswith("isal") else name
    return make_strategy(base, seed=seed, solver=config.solver, params=config.params, top_k=config.top_k,
                         reference="labeled" if name == "isal_labeled" else "given",
                         hessian_samples=config.hessian_samples or None, damping=config.damping)


class Simulation:
    """Train, evaluate, rank and select, each a pure function of (config, data, state):
    the same labeled set, seed and round always give the same model and the same order."""

    def __init__(self, config: SimulationConfig, data: SimulationData | None = None):
        self.config = config
        self.data = data or SimulationData.load(config)
        self.device = resolve_device(config.device)
        self.adapter = ClassificationAdapter()
        self._transforms = {train: classification_transform(config.image_size, train=train) for train in (False, True)}

    def dataset(self, indices: list[int], split: str = "train", train: bool = False) -> ImageDataset:
        records = self.data.train if split == "train" else self.data.test
        return ImageDataset([records[i] for i in indices], self._transforms[train])

    def universe(self, seed: int) -> list[int]:
        """The train images this seed's run may label, in a seeded random order."""
        order = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(seed)).tolist()
        return order[:self.config.pool_subset] if self.config.pool_subset else order

    def initial(self, seed: int) -> list[int]:
        return self.universe(seed)[:self.config.initial]

    def pool(self, seed: int, labeled: list[int]) -> list[int]:
        """The unlabeled images of this seed's universe, sorted by train-split index."""
        taken = set(labeled)
        return sorted(i for i in self.universe(seed) if i not in taken)

    def check_plan(self) -> None:
        """Fail before any training when the pool cannot feed every round."""
        c, n = self.config, len(self.data.train)
        if c.pool_subset and c.pool_subset > n:
            raise DataError(f"pool_subset {c.pool_subset} is larger than the train split ({n} images)")
        size = len(self.universe(0))
        if c.initial > size:
            raise DataError(f"initial {c.initial} is larger than the pool ({size} train images)")
        if c.rounds > 1 and c.step > size - c.initial:
            raise DataError(f"step {c.step} is larger than the unlabeled pool "
                            f"({size - c.initial} images left after {c.initial} initial labels)")
        need = c.initial + c.step * (c.rounds - 1)
        if need > size:
            raise DataError(f"{c.rounds} rounds need {need} labels ({c.initial} + {c.rounds - 1} x {c.step}) "
                            f"but the pool holds {size} train images; lower rounds or step")

    def train(self, labeled: list[int], seed: int) -> nn.Module:
        """A model trained from scratch on the labeled set (any order: it is sorted), seeded with `seed`."""
        c = self.config
        config = TrainConfig(epochs=c.epochs, lr=c.lr, batch_size=c.batch_size, seed=seed,
                             device=str(self.device), num_workers=c.workers)
        seed_everything(config.seed)  # train_classifier seeds too, but only after the weights are drawn
        model = build_model(c.arch, len(self.data.classes))
        return train_classifier(model, self.dataset(sorted(labeled), train=True), config, progress=c.progress)

    def evaluate(self, model: nn.Module) -> float:
        return evaluate(model, self.dataset(self.data.evaluation, "test"), self.device, self.config.batch_size)

    def rank(self, strategy: str, model: nn.Module, labeled: list[int], seed: int) -> list[int]:
        """The unlabeled pool (given the labeled set the model was trained on), best first, as
        train-split indices. The strategy's own randomness is seeded with `seed`."""
        c = self.config
        pool = self.pool(seed, labeled)
        ctx = SelectionContext(
            model=model, adapter=self.adapter, pool=self.dataset(pool), labeled=self.dataset(sorted(labeled)),
            reference=self._reference(strategy, seed), device=self.device, batch_size=c.batch_size,
            num_workers=c.workers, budget=min(c.step, len(pool)), progress=c.progress)
        ranking = sim_strategy(strategy, c, seed).rank(ctx)
        return [pool[i] for i in ranking.order.tolist()]

    def select(self, strategy: str, model: nn.Module, labeled: list[int], seed: int) -> list[int]:
        """The `step` images to label next."""
        order = self.rank(strategy, model, labeled, seed)
        return order[:check_budget(self.config.step, len(order))]

    def _reference(self, strategy: str, seed: int) -> ImageDataset | None:
        if strategy in _USES_R:
            return self.dataset(self.data.reference, "test")
        if strategy == "isal_l1":
            return self.dataset(self.initial(seed))
        return None


# ---------------------------------------------------------------------------
# the loop


def simulate(config: SimulationConfig, data: SimulationData | None = None) -> Path:
    """Run (or resume) every (seed, strategy) run of `config`; returns the run directory
    holding results.csv, curves.png, savings.md, config.json and state/."""
    sim = Simulation(config, data)
    sim.check_plan()
    out = Path(config.out)
    check_config(out, {**config.identity(), "dataset": sim.data.fingerprint()}, config.model_dump())
    results = ResultsFile(out / "results.csv")
    models = Checkpoints(out / "state", config.arch, len(sim.data.classes), config.image_size)
    title = f"{Path(sim.data.root).name}, {config.arch}, {config.epochs} epochs"
    total = len(config.seeds) * len(config.strategies) * config.rounds
    with tqdm(total=total, desc="simulate", unit="round", disable=not config.progress) as bar:
        for seed in config.seeds:
            for strategy in config.strategies:
                _run(sim, strategy, seed, out, results, models, bar)
            write_report(out, results.rows(), title)  # every row so far, all strategies and seeds
    return out


def _run(sim: Simulation, strategy: str, seed: int, out: Path, results: ResultsFile, models: Checkpoints, bar) -> None:
    """One (strategy, seed) run, from its first unfinished round."""
    state = RunState.load(out / "state" / f"{strategy}-{seed}.json", strategy, seed, sim.initial(seed))
    results.restore(state)
    name, model = f"{strategy}-{seed}", None
    for r in range(1, sim.config.rounds + 1):
        bar.set_postfix_str(f"{strategy} seed {seed} round {r}")
        if state.finished(r):
            model = None
            bar.update()
            continue
        if not state.has(r):
            start = time.perf_counter()
            if model is None:
                model = _model_of(sim, models, name, state, seed, r - 1)
            state.add(r, sim.select(strategy, model, state.labeled(r - 1), seed), time.perf_counter() - start)
            state.save()
        model, metric, seconds = _train_and_evaluate(sim, models, state.labeled(r), seed, r)
        models.save(name, model, round=r)
        row = state.finish(r, metric, seconds)
        state.save()
        results.append(row)
        log.info("%s seed %d round %d: %d labels, metric %.4f (%.1f s)", strategy, seed, r, row["labels"], metric,
                 row["seconds"])
        bar.update()


def _train_and_evaluate(sim: Simulation, models: Checkpoints, labeled: list[int], seed: int, round_: int):
    """(model, metric, seconds). Round 1 is the same for every strategy of a seed, so it
    is trained once and its cost is reported for each."""
    if round_ == 1:
        cached = models.load(f"initial-{seed}", sim.device, seed=seed)
        if cached is not None:
            return cached[0], cached[1]["metric"], cached[1]["seconds"]
    start = time.perf_counter()
    model = sim.train(labeled, seed)
    metric = sim.evaluate(model)
    seconds = time.perf_counter() - start
    if round_ == 1:
        models.save(f"initial-{seed}", model, seed=seed, metric=metric, seconds=seconds)
    return model, metric, seconds


def _model_of(sim: Simulation, models: Checkpoints, name: str, state: RunState, seed: int, round_: int) -> nn.Module:
    """The model of a finished round: its checkpoint, or (checkpoint lost) retrained identically."""
    found = models.load(name, sim.device, round=round_)
    if found is not None:
        return found[0]
    log.warning("no checkpoint of %s round %d: retraining it (seeded, so the same model)", name, round_)
    return sim.train(state.labeled(round_), seed)


# ---------------------------------------------------------------------------
# command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`isal simulate` options; every one overrides the --config file (defaults: SimulationConfig)."""
    fields = SimulationConfig.model_fields.items()
    d = {k: f.default if f.default_factory is None else f.default_factory() for k, f in fields}

    def opt(flag, help_, **kw):
        key = flag[2:].replace("-", "_")
        default = ",".join(map(str, d[key])) if isinstance(d[key], list) else d[key]
        p.add_argument(flag, default=None, help=f"{help_} (default: {default})", **kw)

    p.add_argument("--config", help="JSON protocol file (configs/*.json); flags override it")
    opt("--data", "folder or zip with train/<class>/ and test/<class>/ (none: shared CIFAR-10 zip, else download)")
    opt("--strategies", f"comma list from {', '.join(SIM_STRATEGIES)}", type=_names)
    opt("--initial", "random labels before round 1 (same for every strategy of a seed)", type=int)
    opt("--step", "labels added per round", type=int)
    opt("--rounds", "trained models per run, the initial one included", type=int)
    opt("--seeds", "comma list of seeds (repeats)", type=_ints)
    opt("--arch", "model, trained from scratch each round")
    opt("--epochs", "training epochs per round", type=int)
    opt("--lr", "SGD learning rate", type=float)
    opt("--batch-size", "batch size", type=int)
    opt("--image-size", "input size", type=int)
    opt("--pool-subset", "train images the run may label (seeded subset)", type=int)
    opt("--test-subset", "evaluation images (seeded subset of the test split minus R)", type=int)
    opt("--reference-size", "ISAL's reference set R: labeled test images, disjoint from evaluation", type=int)
    opt("--solver", f"s_test solver: {', '.join(sorted(SOLVERS))}")
    opt("--damping", "lambda in (H + lambda I)", type=float)
    opt("--params", "ISAL parameters: weights, last, all or names")
    opt("--top-k", "pseudo-label classes in the expected gradient", type=int)
    opt("--hessian-samples", "labeled samples that define H (0 = all)", type=int)
    opt("--device", "auto, cpu, cuda, ...")
    opt("--workers", "data-loading worker processes", type=int)
    opt("--out", "run directory (with --config: runs/<config name>); rerun to resume")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    ls = p.add_argument_group("headless Label Studio run (strategies isal, isal_l1, gradsim; see backend.simulate)")
    ls.add_argument("--label-studio", metavar="local|URL",
                    help="play the protocol through Label Studio and the ISAL backend: 'local' starts one under "
                         "<out>/label-studio; a URL must be a server on this machine (default --out: "
                         "the offline one + '-label-studio')")
    ls.add_argument("--api-key", help="with a URL: a token of that server (default: LABEL_STUDIO_API_KEY)")
    ls.add_argument("--files-root", help="with a URL: that server's LOCAL_FILES_DOCUMENT_ROOT (images go there)")


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in _names(text)]


def run(args: argparse.Namespace) -> int:
    """`isal simulate`: errors a user can fix propagate as ValueError for cli.main to print."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    fields = set(SimulationConfig.model_fields) - {"progress"}
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    config = load_config(args.config, **overrides, progress=False if args.quiet else None)
    if args.label_studio and args.out is None:
        config = config.model_copy(update={"out": config.out.rstrip("/") + "-label-studio"})
    try:
        with logging_redirect_tqdm():
            if args.label_studio:
                from backend.simulate import SimulationError, simulate_label_studio  # Label Studio: the backend's

                try:
                    out = simulate_label_studio(config, args.label_studio, args.api_key, args.files_root)
                except SimulationError as exc:
                    raise ValueError(str(exc)) from exc
            else:
                out = simulate(config)
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to resume from {config.out}")
        return 130
    print(f"results: {out / 'results.csv'}\ncurves:  {out / 'curves.png'}\nsavings: {out / 'savings.md'}")
    return 0
