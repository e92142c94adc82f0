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

`Simulation` holds the protocol's moves (train, evaluate, rank, select), each a call of
the engine's round API (`Learner`), so that another driver (the headless Label Studio
simulation, on the backend's side) gets the same order from the same state; `simulate`
adds the loop and the run directory (see simstore) that makes it resumable. The protocol
is `simconfig.SimulationConfig`, the dataset `simdata.SimulationData`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DataError
from ..learner import Learner
from ..selection import resolve_strategy, serves_clusters
from ..selection.base import check_budget
from ..selection.coldstart import typiclust_order
from ..selection.serving import assign, kmeans, served_order
from ..tasks.detection import detection_adapter
from ..tasks.detection_defaults import detection_settings
from ..tasks.frozen import classification_adapter
from ..tasks.multilabel import AUTO_STRATEGY, multilabel_adapter
from .config import SIM_STRATEGIES, USES_R, SimulationConfig, load_config
from .costs import per_box_ranking, prefix_by_cost, true_boxes
from .dataset import SimulationData
from .report import label_balance, write_report
from .rundir import Checkpoints, ResultsFile, RunState, check_config, recorded

__all__ = ["SIM_STRATEGIES", "Simulation", "SimulationConfig", "SimulationData", "load_config", "simulate"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# the protocol's moves


class Simulation:
    """Train, evaluate, rank and select, each a pure function of (config, data, state):
    the same labeled set, seed and round always give the same model and the same order."""

    def __init__(self, config: SimulationConfig, data: SimulationData | None = None):
        self.config = config
        self.data = data or SimulationData.load(config)
        n, self.settings = len(self.data.classes), config
        if config.task == "detection":
            self.adapter, self.settings = detection_adapter(config, n), detection_settings(config)
        elif config.task == "tagging":
            self.adapter = multilabel_adapter(config, n, config.device, config.batch_size)
        else:
            self.adapter = classification_adapter(config, n, config.device, config.batch_size)
        self.device = self.learner(0).device
        self._clusters: dict[int, dict[int, int]] = {}

    def resolved(self, strategy: str) -> str:
        """"auto" -> the task's default (tagging's: tasks.multilabel.AUTO_STRATEGY, as the backend), else itself."""
        return AUTO_STRATEGY if strategy == "auto" and self.config.task == "tagging" else \
            resolve_strategy(strategy, self.settings)

    def learner(self, seed: int) -> Learner:
        return Learner(self.adapter, self.settings, seed, progress=self.config.progress)

    def dataset(self, indices: list[int], split: str = "train", train: bool = False):
        return self.adapter.dataset(self.data.records(split, indices), train=train)

    def universe(self, seed: int) -> list[int]:
        """The train images this seed's run may label, in a seeded random order."""
        order = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(seed)).tolist()
        return order[:self.config.pool_subset] if self.config.pool_subset else order

    def initial(self, seed: int) -> list[int]:
        """The labels before round 1: random (the paper's), or the head of TypiClust's order on the frozen
        embeddings (`initial_strategy: typiclust`, the backend's cold start, with `step` clusters)."""
        universe = self.universe(seed)
        if self.config.initial_strategy == "typiclust":
            ordered = sorted(universe)  # the backend sees the tasks in id order
            order = typiclust_order(self.dataset(ordered).x, self.config.step, seed)
            return [ordered[p] for p in order[:self.config.initial]]
        if self.config.budget == "boxes":  # no model yet: the random set is cut by its true boxes
            return prefix_by_cost(universe, [len(r.label["boxes"]) for r in self.data.records("train", universe)],
                                  self.config.initial)
        return universe[:self.config.initial]

    def boxes(self, labeled: list[int]) -> int | str:
        """True boxes of a labeled set (detection), for the results' boxes column."""
        return true_boxes(self.data.records("train", labeled)) if self.config.task == "detection" else ""

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
        if c.budget == "boxes":
            return  # rounds cost what the model predicts: checked as they run
        if c.initial > size:
            raise DataError(f"initial {c.initial} is larger than the pool ({size} train images)")
        if c.rounds > 1 and c.step > size - c.initial:
            raise DataError(f"step {c.step} is larger than the unlabeled pool "
                            f"({size - c.initial} images left after {c.initial} initial labels)")
        need = c.labels_at(c.rounds)
        if need > size:
            plan = f"budgets up to {need}" if c.budgets else f"{c.initial} + {c.rounds - 1} x {c.step}"
            raise DataError(f"{c.rounds} rounds need {need} labels ({plan}) but the pool holds {size} train images; "
                            f"lower rounds or step")

    def train(self, labeled: list[int], seed: int) -> nn.Module:
        """A model trained from scratch on the labeled set (any order: it is sorted), seeded with `seed`; the
        semi learner also reads the unlabeled pool."""
        pool = self.dataset(self.pool(seed, labeled)) if self.settings.learner == "semi" else None
        return self.learner(seed).fit(self.dataset(sorted(labeled), train=True), pool)

    def evaluate(self, model: nn.Module) -> float:
        return self.learner(0).evaluate(model, self.dataset(self.data.evaluation, "test"))

    def rank(self, strategy: str, model: nn.Module, labeled: list[int], seed: int, round_number: int = 0) -> list[int]:
        """The unlabeled pool (given the labeled set the model was trained on), best first, as
        train-split indices. The strategy's own randomness is seeded with `seed`."""
        return self._round(strategy, model, labeled, seed, round_number)[0]

    def _round(self, strategy: str, model: nn.Module, labeled: list[int], seed: int, round_number: int = 0):
        """(the ranked pool, {train index: the model's prediction} when the strategy made them)."""
        pool = self.pool(seed, labeled)
        learner = self.learner(seed)
        strategy = self.resolved(strategy)
        chosen = learner.strategy("isal" if strategy in ("isal_l1", "isal_labeled") else strategy,
                                  reference="labeled" if strategy == "isal_labeled" else "given")
        result = learner.round(chosen, self.dataset(sorted(labeled)), self.dataset(pool),
                               self._reference(strategy, seed), budget=min(self.config.step_at(round_number),
                                                                           len(pool)), model=model,
                               round_number=round_number)
        predictions = None if result.scores is None else dict(zip(pool, result.scores.predictions))
        ranking = result.ranking
        if self.config.per_box and result.scores is not None:
            ranking = per_box_ranking(result.scores, self.adapter, seed)
        return [pool[i] for i in ranking.order.tolist()], predictions

    def select(self, strategy: str, model: nn.Module, labeled: list[int], seed: int, round_number=0) -> list[int]:
        """The `step` images to label next: the ranking's head, or with cluster serving the head of the
        served order (the best of the least-labeled cluster, one after another), as the backend writes it
        into Label Studio's scores. A labeled image counts in its embedding's cluster, or (clusters of
        predicted classes, without frozen features) in its label's."""
        order, predictions = self._round(strategy, model, labeled, seed, round_number)
        if self.config.budget == "boxes":  # the picks' predicted boxes pay for the round
            if predictions is None:
                predictions = dict(zip(order, self.learner(seed).predict(model, self.dataset(order))))
            return prefix_by_cost(order, [self.adapter.cost(predictions[i]) for i in order],
                                  self.config.step_at(round_number))
        budget = check_budget(self.config.step_at(round_number), len(order))
        if not serves_clusters(self.resolved(strategy), self.settings):
            return order[:budget]
        if self.settings.cluster_source == "embeddings":
            clusters = self.clusters(seed)
            pool_clusters, labeled_clusters = [clusters[i] for i in order], [clusters[i] for i in labeled]
        else:
            if predictions is None:
                predictions = dict(zip(order, self.learner(seed).predict(model, self.dataset(order))))
            pool_clusters = [self.adapter.cluster(predictions[i]) for i in order]
            labeled_clusters = [self.data.train[i].label for i in labeled]
        return [order[p] for p in served_order(range(len(order)), pool_clusters, labeled_clusters)[:budget]]

    def clusters(self, seed: int) -> dict[int, int]:
        """Train index -> cluster of k-means on the universe's frozen embeddings (fitted once per seed, as the
        backend fits once per project on the tasks of its first job)."""
        if seed not in self._clusters:
            universe = sorted(self.universe(seed))
            x = self.dataset(universe).x
            k = self.config.clusters or len(self.data.classes)
            self._clusters[seed] = dict(zip(universe, assign(x, kmeans(x, k, seed)).tolist()))
        return self._clusters[seed]

    def _reference(self, strategy: str, seed: int):
        if strategy in USES_R:
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
    check_config(out, {**config.identity(), "dataset": sim.data.fingerprint()}, recorded(config, sim.adapter),
                 SimulationConfig.implied())
    results = ResultsFile(out / "results.csv")
    models = Checkpoints(out / "state", sim.adapter)
    title = f"{Path(sim.data.root).name}, {config.arch}, {config.epochs} epochs"
    total = len(config.seeds) * len(config.strategies) * config.rounds
    with tqdm(total=total, desc="simulate", unit="round", disable=not config.progress) as bar:
        for seed in config.seeds:
            for strategy in config.strategies:
                _run(sim, strategy, seed, out, results, models, bar)
            write_report(out, results.rows(), title, pick_balance(sim, out), sim.adapter.metric().name)
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
            added = sim.select(strategy, model, state.labeled(r - 1), seed, round_number=r - 1)  # = its job number
            state.add(r, added, time.perf_counter() - start)
            state.save()
        model, metric, seconds = _train_and_evaluate(sim, models, state.labeled(r), seed, r)
        models.save(name, model, round=r)
        row = state.finish(r, metric, seconds, sim.boxes(state.labeled(r)))
        state.save()
        results.append(row)
        log.info("%s seed %d round %d: %d labels, metric %.4f (%.1f s)", strategy, seed, r, row["labels"], metric,
                 row["seconds"])
        bar.update()


def pick_balance(sim: Simulation, out: Path) -> dict[str, float]:
    """Per strategy: the label balance of its picks (simreport.label_balance), over every seed run so far."""
    picks: dict[str, list[list[int]]] = {}
    if sim.config.task != "classification":
        return picks  # an image holds boxes, or tags, of several classes
    for strategy in sim.config.strategies:
        for seed in sim.config.seeds:
            path = out / "state" / f"{strategy}-{seed}.json"
            if path.exists():
                rounds = RunState.load(path, strategy, seed, sim.initial(seed)).rounds[1:]
                picks.setdefault(strategy, []).extend([sim.data.train[i].label for i in r["added"]] for r in rounds)
    return {s: label_balance(p, len(sim.data.classes)) for s, p in picks.items() if p}


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


