"""Multi-label tagging's engine parts against exact answers: the cheapest flip sets against enumerating every set,
UUIC's expected gradient over the M most probable tag vectors against enumerating all 2^L of them (and zero over
the whole distribution), mAP against scikit-learn, influence against retraining a convex multi-label model, and
every baseline ranking a multi-label pool by the task's own uncertainty."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from isal_core.errors import DataError
from isal_core.influence.gradients import HessianOperator, reference_gradient
from isal_core.influence.params import select_parameters
from isal_core.influence.stest import CG
from isal_core.learner import Learner
from isal_core.settings import EngineSettings
from isal_core.tasks.frozen import Embeddings
from isal_core.tasks.multilabel import MeanAveragePrecision, MultiLabelAdapter, cheapest_flips

TAGS, DIM = 5, 4


def adapter(tags: int = TAGS) -> MultiLabelAdapter:
    """The adapter's task half (loss, pseudo-targets, metric) without a backbone: these tests give embeddings."""
    a = MultiLabelAdapter.__new__(MultiLabelAdapter)
    a.num_classes = tags
    return a


def grad(model, loss) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


@pytest.mark.parametrize("seed", range(3))
def test_the_cheapest_flip_sets_are_those_of_enumeration(seed):
    costs = torch.rand(6, generator=torch.Generator().manual_seed(seed)).tolist()
    every = sorted((sum(costs[i] for i in s), tuple(sorted(s)))
                   for r in range(7) for s in itertools.combinations(range(6), r))
    got = cheapest_flips(costs, 64)
    assert len(got) == 64 and len({tuple(sorted(s)) for _, s in got}) == 64
    assert [round(c, 12) for c, _ in got] == [round(c, 12) for c, _ in every]
    assert cheapest_flips(costs, 10) == got[:10] and cheapest_flips([], 5) == [(0.0, ())]


@pytest.mark.parametrize("m", [1, 3, 8])
def test_the_expected_gradient_is_the_enumerated_one_and_zero_over_every_vector(m):
    torch.manual_seed(m)
    model = nn.Linear(DIM, TAGS).double()
    x = torch.randn(1, DIM, dtype=torch.float64)
    task = adapter()
    p = model(x).sigmoid()[0].detach()
    vectors = torch.tensor(list(itertools.product([0.0, 1.0], repeat=TAGS)), dtype=torch.float64)
    prob = (vectors * p + (1 - vectors) * (1 - p)).prod(1)
    top = prob.argsort(descending=True)[:m]
    naive = sum(prob[k] / prob[top].sum() * grad(model, task.loss(model(x), vectors[k:k + 1]).sum()) for k in top)
    got = grad(model, task.loss(model(x), task.pseudo_targets(model(x), top_k=m)).sum())
    assert torch.allclose(got, naive, atol=1e-12)
    whole = sum(prob[k] * grad(model, task.loss(model(x), vectors[k:k + 1]).sum()) for k in range(len(vectors)))
    assert whole.abs().max() < 1e-12  # why UUIC takes the mode (m = 1), not the expectation over every vector
    mode = task.pseudo_targets(model(x), top_k=1)
    assert torch.equal(mode[0], (p >= 0.5).double())


def test_mean_average_precision_is_scikit_learns():
    from sklearn.metrics import average_precision_score, f1_score

    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(200, TAGS, generator=g) < 0.3).double()
    targets[:, 4] = 0  # a tag nobody has: left out of the mean
    logits = torch.randn(200, TAGS, generator=g, dtype=torch.float64) + 2 * targets
    metric = MeanAveragePrecision()
    metric.update(logits[:120], targets[:120])
    metric.update(logits[120:], targets[120:])
    expected = [average_precision_score(targets[:, j], logits[:, j]) for j in range(4)]
    assert metric.compute() == pytest.approx(sum(expected) / 4, abs=1e-12)
    assert metric.micro_f1 == pytest.approx(f1_score(targets.numpy(), (logits >= 0).numpy(), average="micro"))
    empty = MeanAveragePrecision()
    with pytest.raises(DataError, match="empty"):
        empty.compute()


def test_tags_outside_the_config_and_unlabeled_images_are_named():
    task = adapter()
    assert task.multi_hot([]).tolist() == [0.0] * TAGS and task.multi_hot([0, 3]).tolist() == [1, 0, 0, 1, 0]
    with pytest.raises(DataError, match="tag 7"):
        task.multi_hot([7])
    with pytest.raises(DataError, match="unlabeled"):
        task.check_targets(task.multi_hot(None)[None], "the reference set")
    assert task.predict(torch.tensor([[1.0, -1, 0, -2, 3]])) == [[0, 2, 4]]


def _fit(model, x, y, l2, task):
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = task.loss(model(x), y).mean() + l2 / 2 * sum((p ** 2).sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return model


def retraining_check(seed: int, n_labeled: int = 200, n_candidates: int = 30, l2: float = 0.01) -> float:
    """Spearman, over candidates labeled with the model's own tags (UUIC), between the influence on the reference
    loss and its actual change when the candidate is added and the convex model retrained to convergence."""
    from scipy.stats import spearmanr

    task = adapter(3)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, DIM, generator=g, dtype=torch.float64) * 2

    def sample(n):
        x = torch.randn(n, DIM, generator=g, dtype=torch.float64)
        return x, torch.bernoulli((x @ w.T).sigmoid(), generator=g)

    (xl, yl), (xr, yr), (xc, _) = sample(n_labeled), sample(200), sample(n_candidates)
    torch.manual_seed(0)
    model = _fit(nn.Linear(DIM, 3).double(), xl, yl, l2, task)
    params = select_parameters(model, "all")
    v = reference_gradient(model, task, [(xr, yr, torch.arange(len(xr)))], params)
    s_test = CG(damping=l2, tol=1e-12, max_iter=500).solve(HessianOperator(model, task, params, [(xl, yl)]), v).s_test
    yc = task.pseudo_targets(model(xc))
    grads = [reference_gradient(model, task, [(xc[i:i + 1], yc[i:i + 1], [i])], params) for i in range(len(xc))]

    def ref_loss(m):
        with torch.no_grad():
            return float(task.loss(m(xr), yr).sum())

    base, actual = ref_loss(model), []
    for i in range(len(xc)):
        retrained = nn.Linear(DIM, 3).double()
        retrained.load_state_dict(model.state_dict())
        actual.append(ref_loss(_fit(retrained, torch.cat([xl, xc[i:i + 1]]), torch.cat([yl, yc[i:i + 1]]), l2,
                                    task)) - base)
    return spearmanr([-float(s_test.dot(gz)) for gz in grads], actual).statistic


def test_influence_predicts_retraining_a_convex_multi_label_model():
    """Measured (seeds 0-4): 0.996, 0.993, 0.998, 0.996, 0.999."""
    rho = [retraining_check(seed) for seed in range(3)]
    assert min(rho) >= 0.9, rho


def headed(tags: int = 3) -> MultiLabelAdapter:
    """The adapter with a linear head on given DIM-d embeddings (no backbone to build)."""
    a = adapter(tags)
    a._backbone, a._dim, a.head, a.device, a.batch_size = nn.Identity(), DIM, "linear", torch.device("cpu"), 16
    return a


def tagged(task: MultiLabelAdapter, n: int, seed: int, labeled: bool = True) -> Embeddings:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    w = torch.tensor([[2.0, -1, 0, 0.5], [0, 1.5, -1, 0], [-1, 0, 1, 1]], dtype=torch.float64)
    tags = torch.bernoulli((x @ w.T).sigmoid(), generator=g)
    return Embeddings(x, [task.multi_hot(torch.nonzero(t).flatten().tolist() if labeled else None) for t in tags])


@pytest.mark.parametrize("strategy", ["isal", "random", "entropy", "least_confidence", "coreset", "badge"])
def test_every_baseline_ranks_a_multi_label_pool(strategy):
    task = headed()
    labeled, reference, pool = tagged(task, 64, 1), tagged(task, 32, 2), tagged(task, 40, 3, labeled=False)
    settings = EngineSettings(epochs=40, lr=0.5, batch_size=16, solver="cg", damping=0.01, params="all",
                              hessian_samples=0, device="cpu")
    learner = Learner(task, settings, seed=0)
    result = learner.round(strategy, labeled, pool, reference, budget=5)
    assert sorted(result.ranking.order.tolist()) == list(range(40))
    assert learner.evaluate(result.model, tagged(task, 200, 4)) > 0.8  # mAP on fresh data
    with torch.no_grad():
        outputs = result.model(pool.x)
    if strategy == "entropy":  # the mean binary entropy, most uncertain first
        assert result.ranking.order[0] == int(task.entropy(outputs).argmax())
    if strategy == "least_confidence":
        assert result.ranking.order[0] == int(task.confidence(outputs).argmin())


def test_the_review_names_the_likeliest_wrong_and_missing_tag():
    logits = torch.tensor([[3.0, -2.0, 0.5, -0.1], [1.0, 1.0, 1.0, 1.0], [-1.0, -3.0, -2.0, -4.0]])
    ticked = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    found = MultiLabelAdapter.tag_suspects(logits, ticked)
    assert found[0]["wrong"]["tag"] == 1 and found[0]["missing"]["tag"] == 2  # ticked yet p 0.12; unticked, p 0.62
    assert found[0]["missing"]["p"] == pytest.approx(float(torch.tensor(0.5).sigmoid()), abs=1e-4)
    assert found[1]["missing"] is None and found[2]["wrong"] is None and found[2]["missing"]["tag"] == 0
