"""A task that is not single-label classification plugs into the round API by writing only an adapter.

Multi-label tagging with a sigmoid loss on a convex model (multi-label logistic regression),
so every number has an exact answer: s_test against a direct solve of the damped Hessian,
the vectorized scores against the per-sample loop, a reloaded scorer against the original.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from isal_core import EngineSettings, InfluenceScorer, Learner, Metric, TaskAdapter
from isal_core.influence.gradients import HessianOperator, collect_batches, reference_gradient
from isal_core.influence.params import select_parameters
from isal_core.influence.pool import influence_loop
from isal_core.train.checkpoints import load_checkpoint, save_checkpoint

DIM, TAGS = 6, 3


class Tagged(Dataset):
    """(features, multi-hot tags, index) items; tags None = unlabeled."""

    def __init__(self, records):
        self.records = list(records)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        x, y = self.records[i]
        return x, (torch.full((TAGS,), -1.0) if y is None else y), i


class ExactMatch(Metric):
    name = "exact_match"

    def __init__(self):
        self.hits = self.total = 0

    def update(self, outputs, targets):
        self.hits += int(((outputs > 0).float() == targets).all(1).sum())
        self.total += len(targets)

    def compute(self):
        return self.hits / self.total


class MultiLabelAdapter(TaskAdapter):
    """Everything the engine needs to know about multi-label tagging, and nothing else."""

    def build_model(self):
        return nn.Linear(DIM, TAGS)

    def dataset(self, records, train=False):
        return Tagged(records)

    def forward(self, model, inputs):
        return model(inputs)

    def loss(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs, targets, reduction="none").sum(1)

    def pseudo_targets(self, outputs, top_k=1):
        return (outputs.detach() > 0).float()

    def predict(self, outputs):
        return [[t for t in range(TAGS) if o[t] > 0] for o in outputs.tolist()]

    def metric(self):
        return ExactMatch()

    def check_targets(self, targets, what):
        assert (targets >= 0).all(), f"{what} holds unlabeled samples"
        return targets


def records(n, seed, labeled=True):
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(DIM, TAGS, generator=torch.Generator().manual_seed(99))
    x = torch.randn(n, DIM, generator=g)
    y = (x @ truth > 0).float()
    return [(x[i], y[i] if labeled else None) for i in range(n)]


SETTINGS = EngineSettings(epochs=40, lr=0.5, batch_size=16, solver="cg", damping=0.01, cg_tol=1e-12, cg_iters=200,
                          params="all", hessian_samples=0)


def test_a_multi_label_task_runs_a_whole_round_through_its_adapter_alone(tmp_path):
    adapter = MultiLabelAdapter()
    labeled, reference, pool = (adapter.dataset(records(n, seed, lab)) for n, seed, lab in
                                ((64, 1, True), (32, 2, True), (40, 3, False)))
    learner = Learner(adapter, SETTINGS, seed=0)
    result = learner.round("isal", labeled, pool, reference, budget=5)

    # train: the round fitted the adapter's model with the adapter's loss
    assert learner.evaluate(result.model, adapter.dataset(records(200, 4))) > 0.8

    # s_test: the exact solution of (H + damping I) x = grad l(R)
    params = select_parameters(result.model, "all")
    batches = collect_batches(adapter, DataLoader(labeled, batch_size=16), "cpu")
    op = HessianOperator(result.model, adapter, params, batches)
    v = reference_gradient(result.model, adapter, DataLoader(reference, batch_size=16), params)
    exact = torch.linalg.solve(op.dense().double() + SETTINGS.damping * torch.eye(op.dim, dtype=torch.float64),
                               v.double())
    assert ((result.scorer.s_test.double() - exact).norm() / exact.norm()) < 1e-5

    # score: the vectorized pass equals the per-sample loop, and its predictions are the adapter's
    loop = influence_loop(result.model, adapter, pool, result.scorer.s_test, params)
    influence = result.scores.influence
    assert ((influence - loop).norm() / loop.norm()) < 1e-4
    with torch.no_grad():
        assert result.scores.predictions == adapter.predict(result.model(torch.stack([x for x, _ in pool.records])))

    # rank: most negative influence first
    assert torch.equal(result.ranking.top(5), torch.argsort(influence, stable=True)[:5])

    # save and reload the scorer (and the model): the same scores for the same pool
    save_checkpoint(tmp_path / "model.pt", result.model, adapter.to_meta())
    result.scorer.save(tmp_path / "s_test.pt")
    model, _ = load_checkpoint(tmp_path / "model.pt", adapter=adapter)
    again = InfluenceScorer.load(tmp_path / "s_test.pt").score(model, adapter, pool, batch_size=SETTINGS.batch_size)
    assert torch.equal(again.influence, influence) and again.predictions == result.scores.predictions


def test_the_same_labeled_set_and_seed_give_the_same_round():
    adapter = MultiLabelAdapter()
    labeled, reference, pool = adapter.dataset(records(32, 1)), adapter.dataset(records(16, 2)), adapter.dataset(
        records(20, 3, False))
    first = Learner(adapter, SETTINGS, seed=3).round("gradsim", labeled, pool, reference)
    second = Learner(adapter, SETTINGS, seed=3).round("gradsim", labeled, pool, reference)
    assert torch.equal(first.scores.influence, second.scores.influence)
    assert torch.equal(first.ranking.order, second.ranking.order)
