"""One ISAL round, the one way the CLI, the offline simulation and the backend run it.

    learner = Learner(adapter, EngineSettings(...), seed=0)
    result = learner.round("isal", labeled, pool, reference)   # fit -> prepare -> score -> rank
    result.ranking.top(100), result.scores.predictions, result.scorer.save(path)

Each verb is also public (`fit`, `evaluate`, `rank`, `prepare`, `score`), so a driver
that evaluates between fitting and ranking (the simulation) calls the same code. `fit`
seeds itself, the model's initial weights included: the same labeled set and seed
always give the same model, whoever calls it.

Under torchrun (isal_core.utils.distributed) the same calls run on every rank: the ranks fit
together (DDP), rank 0 solves s_test and broadcasts it, each rank scores its shard of the
pool, and rank 0 gathers the scores and ranks (the other ranks' results have no scores or
ranking).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .errors import SelectionError
from .influence.review import Review, review
from .influence.scorer import InfluenceScorer, PoolScores, score_sharded
from .selection import ISAL, BatchISAL, Ranking, SelectionContext, Strategy, influence_ranking, make_strategy
from .settings import EngineSettings
from .tasks.base import TaskAdapter
from .tasks.frozen import Embeddings
from .train import evaluation, semi
from .train.loop import train
from .utils import distributed
from .utils.runtime import resolve_device, seed_everything


@dataclass
class RoundResult:
    """A round's model, its ranking of the pool, and for influence strategies the scorer
    (s_test, to save with the model) and the pool's influence and predictions."""

    model: nn.Module
    ranking: Ranking
    scorer: InfluenceScorer | None = None
    scores: PoolScores | None = None


class Learner:
    """The round's verbs over one adapter, one settings object and one seed."""

    def __init__(self, adapter: TaskAdapter, settings: EngineSettings | None = None, seed: int = 0,
                 progress: bool = False):
        self.adapter, self.settings, self.seed, self.progress = adapter, settings or EngineSettings(), seed, progress
        self.device = resolve_device(distributed.device_of_rank(self.settings.device))
        rank, self.world_size = distributed.rank_and_size()
        self.main_process = rank == 0  # (always, outside torchrun)
        self.warnings: list[str] = []  # what went wrong and was recovered from (a diverged training), for reports

    def fit(self, labeled: Dataset, pool: Dataset | None = None) -> nn.Module:
        """A fresh model (seeded initial weights) trained on `labeled` with the adapter's loss (under
        torchrun: DDP, then rank 0's weights and buffers on every rank, BatchNorm statistics included).
        With `learner: semi` and frozen embeddings, refit on the labels and the `pool` items they are
        trusted to reach (isal_core.train.semi)."""
        model = self._train(labeled, self.settings)
        if self.settings.learner == "semi" and self.adapter.learns_from_pool and isinstance(labeled, Embeddings) \
                and isinstance(pool, Embeddings) and len(pool) and len(labeled):
            head_says = self.adapter.probabilities(model(pool.x.to(self.device))).argmax(1).cpu()
            trained_on = semi.training_set(labeled, pool, head_says, self.adapter.num_classes,
                                           self.settings.semi_neighbours, sure=self.settings.semi_sure)
            model = self._train(trained_on, self.settings.model_copy(update={"epochs": 1}))
            model.semi_training_set = trained_on  # the objective the head minimised: influence's Hessian
        return model

    def _train(self, dataset: Dataset, settings: EngineSettings) -> nn.Module:
        seed_everything(self.seed)
        model = train(self.adapter.build_model(), self.adapter, dataset, settings, self.seed, self.device,
                      settings.workers, self.progress and self.main_process, warn=self.warnings.append)
        return distributed.broadcast_model(model, self.device)

    def evaluate(self, model: nn.Module, dataset: Dataset) -> float:
        """The adapter's metric on a labeled dataset."""
        return evaluation.evaluate(model, self.adapter, self.loader(dataset), self.device)

    def predict(self, model: nn.Module, dataset: Dataset) -> list:
        """The adapter's prediction for every sample of `dataset`."""
        return evaluation.predict(model, self.adapter, self.loader(dataset), self.device)

    def loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.settings.batch_size, shuffle=False,
                          num_workers=self.settings.workers, collate_fn=self.adapter.collate_fn)

    def context(self, model: nn.Module, pool: Dataset, labeled: Dataset | None = None,
                reference: Dataset | None = None, budget: int | None = None, round_number: int = 0) -> SelectionContext:
        return SelectionContext(model=model, adapter=self.adapter, pool=pool, labeled=labeled, reference=reference,
                                device=self.device, batch_size=self.settings.batch_size,
                                num_workers=self.settings.workers, budget=budget, progress=self.progress,
                                round_number=round_number)

    def strategy(self, name: str | Strategy, reference: str = "given") -> Strategy:
        return name if isinstance(name, Strategy) else make_strategy(name, self.settings, self.seed, reference)

    def rank(self, strategy: str | Strategy, model: nn.Module, pool: Dataset, labeled: Dataset | None = None,
             reference: Dataset | None = None, budget: int | None = None, round_number: int = 0) -> Ranking:
        """The whole pool, best first, by any strategy (`round_number`: the round of active learning, 1, 2, ...)."""
        return self.strategy(strategy).rank(self.context(model, pool, labeled, reference, budget, round_number))

    def prepare(self, strategy: str | Strategy, model: nn.Module, labeled: Dataset,
                reference: Dataset | None, labels_only: bool = False) -> InfluenceScorer:
        """s_test for an influence strategy (isal, gradsim; isal_batch's own isal), as a scorer to save and reuse.
        The Hessian is the one of the objective the model minimised: for a semi head, its labels and trusted
        pseudo-labels (docs/engine.md); `labels_only`: over `labeled` alone (the review's, cheaper)."""
        chosen = self.strategy(strategy)
        chosen = chosen.isal if isinstance(chosen, BatchISAL) else chosen
        if not isinstance(chosen, ISAL):
            raise TypeError(f"{chosen.name} is not an influence strategy; use rank()")
        trained_on = labeled if labels_only else getattr(model, "semi_training_set", labeled)  # (a semi head's)
        scorer = chosen.prepare(self.context(model, labeled, trained_on, reference)) if self.main_process else None
        if self.world_size > 1 and scorer is not None:
            scorer = replace(scorer, s_test=scorer.s_test.cpu())
        return distributed.broadcast_object(scorer)

    def score(self, scorer: InfluenceScorer, model: nn.Module, pool: Dataset) -> PoolScores | None:
        """Influence and predictions of every pool sample, in one pass (under torchrun: each rank its
        shard; the whole pool's on rank 0, None on the others)."""
        return score_sharded(lambda shard: scorer.score(
            model, self.adapter, shard, self.device, self.settings.batch_size, self.settings.workers,
            self.progress and self.main_process), pool)

    def round(self, strategy: str | Strategy, labeled: Dataset, pool: Dataset, reference: Dataset | None = None,
              budget: int | None = None, model: nn.Module | None = None, train_set: Dataset | None = None,
              on_phase: Callable[[str], None] = lambda phase: None, round_number: int = 0,
              predict: bool = False) -> RoundResult:
        """fit (unless `model` is given) -> rank; influence strategies also return scorer and scores.

        `train_set` is what fit trains on when it differs from `labeled` (e.g. the same
        records with augmentation); `labeled` itself defines the Hessian, without it.
        `on_phase` hears "training", "computing s_test", "scoring the pool" as they start.
        `predict`: the pool's predictions whatever the strategy (a baseline's scores then hold
        them, with no influence: NaN), as a backend job writes them.
        """
        if model is None:
            on_phase("training")
            model = self.fit(train_set if train_set is not None else labeled, pool)
        chosen = self.strategy(strategy)
        influential = chosen.isal if isinstance(chosen, BatchISAL) else chosen
        if not isinstance(influential, ISAL):
            on_phase("ranking")
            ranking = self.rank(chosen, model, pool, labeled, reference, budget, round_number)
            scores = None
            if predict and self.main_process:
                scores = PoolScores(torch.full((len(pool),), float("nan"), dtype=torch.float64),
                                    self.predict(model, pool))
            return RoundResult(model, ranking, None, scores)
        if len(pool) == 0:
            raise SelectionError("the pool is empty: there is nothing to rank")
        on_phase("computing s_test")
        scorer = self.prepare(influential, model, labeled, reference)
        on_phase("scoring the pool")
        scores = self.score(scorer, model, pool)
        ranking = None if scores is None else influence_ranking(scores, self.adapter, self.seed)
        if ranking is not None and chosen is not influential:  # the batch spread out among the top influence
            on_phase("ranking")
            ranking = chosen.rank_by(self.context(model, pool, labeled, reference, budget, round_number), ranking)
        return RoundResult(model, ranking, scorer, scores)

    def review(self, labeled: Dataset, reference: Dataset | None = None, model: nn.Module | None = None,
               train_set: Dataset | None = None) -> tuple[nn.Module, Review]:
        """The labeled set's annotations scored by how likely each is wrong (isal_core.influence.review):
        fit (unless `model` is given), s_test over R (default: the labeled set itself), then the review."""
        if model is None:
            model = self.fit(train_set if train_set is not None else labeled)
        scorer = self.prepare("isal", model, labeled, reference if reference is not None else labeled)
        damping = self.settings.damping if self.settings.solver != "identity" else 0.0
        found = review(model, self.adapter, labeled, scorer.s_test, scorer.params, self.device,
                       self.settings.batch_size, damping=damping)
        if self.settings.frozen:  # a head refits in seconds: the loss each annotation gets from heads never fit on it
            found.oof_loss = self.cross_fitted_loss(train_set if train_set is not None else labeled)
        return model, found

    def cross_fitted_outputs(self, labeled: Dataset, folds: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs, targets) of each sample, in dataset order, under a model fit on the other folds (seeded
        split): a wrong label a model memorised still costs a model that never saw it (cleanlab's out-of-fold
        input)."""
        n = len(labeled)
        parts = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).chunk(max(2, min(folds, n)))
        outputs, targets = [], []
        for part in parts:
            rest = torch.ones(n, dtype=torch.bool)
            rest[part] = False
            model = self.fit(Subset(labeled, rest.nonzero().flatten().tolist()))
            held = Subset(labeled, part.tolist())
            got = [(o.double().cpu(), t.cpu()) for o, t, _ in
                   evaluation.outputs(model, self.adapter, self.loader(held), self.device)]
            outputs.append(torch.cat([o for o, _ in got]))
            targets.append(torch.cat([t for _, t in got]))
        order = torch.cat(parts).argsort()  # back to dataset order
        return torch.cat(outputs)[order], torch.cat(targets)[order]

    def cross_fitted_loss(self, labeled: Dataset, folds: int = 5) -> torch.Tensor:
        """Each sample's loss under a model fit on the other folds (cross_fitted_outputs), in dataset order."""
        return self.adapter.loss(*self.cross_fitted_outputs(labeled, folds)).double()
