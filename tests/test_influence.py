"""Pool scoring: the vectorized paths against the per-sample definition, and against retraining."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from isal_core.errors import NonFiniteError
from isal_core.influence.gradients import HessianOperator, reference_gradient
from isal_core.influence.params import select_parameters
from isal_core.influence.pool import expected_gradient, influence, influence_loop, layerwise_supported
from isal_core.influence.stest import CG
from isal_core.selection import ISAL, Random, SelectionContext, check_budget
from isal_core.tasks.classification import ClassificationAdapter

ADAPTER = ClassificationAdapter()


class Items(torch.utils.data.Dataset):
    def __init__(self, x, y=None):
        self.x, self.y = x, y if y is not None else torch.full((len(x),), -1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), i


def small_bn_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(inplace=True),  # in-place right after a conv
        nn.Conv2d(12, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 16, 16))  # non-trivial BatchNorm running statistics
    return model.eval()


PARAMETER_SETS = {
    "weights": "weights",
    "last": "last",
    "named": ["0.weight", "1.weight", "1.bias", "5.weight", "10.bias"],  # BatchNorm too: forward-mode path
}


@pytest.mark.parametrize("which", list(PARAMETER_SETS))
@pytest.mark.parametrize("top_k", [1, 3])
def test_vectorized_equals_per_sample_loop(which, top_k):
    model = small_bn_cnn()
    pool = Items(torch.randn(37, 3, 16, 16))
    params = select_parameters(model, PARAMETER_SETS[which])
    assert layerwise_supported(model, params) == (which != "named")
    s_test = torch.randn(sum(p.numel() for _, p in params), generator=torch.Generator().manual_seed(1))
    fast = influence(model, ADAPTER, DataLoader(pool, batch_size=8), s_test, params, top_k=top_k)
    slow = influence_loop(model, ADAPTER, pool, s_test, params, top_k=top_k)
    assert float((fast - slow).norm() / slow.norm()) < 1e-4
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_top_k_expected_gradient_is_its_definition():
    model = small_bn_cnn()
    x = torch.randn(1, 3, 16, 16)
    params = select_parameters(model, "weights")
    probs = model(x).softmax(1)[0].detach()
    top_p, top_i = probs.topk(3)
    naive = 0
    for p, k in zip(top_p / top_p.sum(), top_i):
        loss = nn.functional.cross_entropy(model(x), k.view(1))
        naive = naive + p * torch.cat([g.flatten() for g in torch.autograd.grad(loss, [q for _, q in params])])
    got = expected_gradient(model, ADAPTER, x, params, top_k=3)
    assert torch.allclose(got, naive, rtol=1e-5, atol=1e-7)
    argmax = expected_gradient(model, ADAPTER, x, params, top_k=1)
    loss = nn.functional.cross_entropy(model(x), probs.argmax().view(1))
    assert torch.allclose(argmax, torch.cat([g.flatten() for g in torch.autograd.grad(loss, [q for _, q in params])]))


def _fit(model, x, y, l2):
    """Minimise mean CE + l2/2 |theta|^2 to high precision (convex, float64)."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-14, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + l2 / 2 * sum((p ** 2).sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return model


def retraining_check(seed: int, n_labeled: int = 200, n_candidates: int = 40, dim: int = 5, l2: float = 0.01):
    """Spearman, over candidate points, between the actual change of the reference loss when one point is
    added and the model retrained (convex, to convergence), and (exact influence, gradient similarity)."""
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([[2.0, -1, 0, 0.5, 0], [0, 1.5, -1, 0, 0.5], [-1, 0, 1, 1, 0]], dtype=torch.float64)

    def sample(n):
        x = torch.randn(n, dim, generator=g, dtype=torch.float64)
        return x, torch.multinomial((x @ w.T).softmax(1), 1, generator=g).flatten()

    (xl, yl), (xr, yr), (xc, yc) = sample(n_labeled), sample(200), sample(n_candidates)
    torch.manual_seed(0)
    model = _fit(nn.Linear(dim, 3).double(), xl, yl, l2)
    params = select_parameters(model, "all")
    v = reference_gradient(model, ADAPTER, [(xr, yr, torch.arange(len(xr)))], params)
    op = HessianOperator(model, ADAPTER, params, [(xl, yl)])
    s_test = CG(damping=l2, tol=1e-12, max_iter=500).solve(op, v).s_test
    grads = [reference_gradient(model, ADAPTER, [(xc[i:i + 1], yc[i:i + 1], [i])], params) for i in range(len(xc))]

    def ref_loss(m):
        with torch.no_grad():
            return float(nn.functional.cross_entropy(m(xr), yr, reduction="sum"))

    base, actual = ref_loss(model), []
    for i in range(len(xc)):
        retrained = nn.Linear(dim, 3).double()
        retrained.load_state_dict(model.state_dict())
        actual.append(ref_loss(_fit(retrained, torch.cat([xl, xc[i:i + 1]]), torch.cat([yl, yc[i:i + 1]]), l2)) - base)
    exact = spearmanr([-float(s_test.dot(gz)) for gz in grads], actual).statistic
    gradsim = spearmanr([-float(v.dot(gz)) for gz in grads], actual).statistic
    return exact, gradsim


def test_influence_predicts_retraining_on_every_seed_and_beats_gradient_similarity():
    """Predicted vs actual change of the reference loss after adding one labeled point, 5 draws of the data.

    Measured (seeds 0-4): exact influence 0.988, 0.938, 0.946, 0.988, 0.998 (mean 0.972); gradient
    similarity (H = I) 0.898, 0.651, 0.680, 0.942, 0.988 (mean 0.832). With 40 labeled points instead of
    200 one added point moves the model too far for a first-order estimate: exact influence reached 0.9
    on 6 of 10 draws there (worst 0.69), which is why the labeled set is 200 here."""
    results = [retraining_check(seed) for seed in range(5)]
    exact, gradsim = torch.tensor(results).T.tolist()
    assert min(exact) >= 0.9 and sum(exact) / 5 >= 0.95, exact
    assert all(e > g for e, g in results), results
    assert sum(exact) / 5 - sum(gradsim) / 5 >= 0.05, (exact, gradsim)


def test_selection_takes_the_most_negative_influence():
    model = small_bn_cnn()
    g = torch.Generator().manual_seed(0)
    labeled = Items(torch.randn(24, 3, 16, 16, generator=g), torch.randint(0, 5, (24,), generator=g))
    reference = Items(torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 5, (16,), generator=g))
    pool = Items(torch.randn(30, 3, 16, 16, generator=g))
    ctx = SelectionContext(model, ADAPTER, pool, labeled, reference, batch_size=8)
    strategy = ISAL(solver=CG(damping=1.0, max_iter=20), params="last")
    scores = strategy.scores(ctx)
    ranking = strategy.rank(ctx)
    assert torch.equal(ranking.scores, scores)
    assert torch.equal(ranking.top(5), torch.argsort(scores)[:5])
    assert scores[ranking.order[0]] == scores.min()
    assert (scores[ranking.order].diff() >= 0).all()


def test_empty_pool_and_budget_errors():
    model = small_bn_cnn()
    params = select_parameters(model, "last")
    with pytest.raises(ValueError, match="pool is empty"):
        influence(model, ADAPTER, DataLoader(Items(torch.zeros(0, 3, 16, 16)), batch_size=4),
                  torch.zeros(sum(p.numel() for _, p in params)), params)
    with pytest.raises(ValueError, match="pool is empty"):
        Random().rank(SelectionContext(model, ADAPTER, Items(torch.zeros(0, 3, 16, 16))))
    with pytest.raises(ValueError, match="larger than the pool"):
        check_budget(11, 10)
    ranking = Random().rank(SelectionContext(model, ADAPTER, Items(torch.zeros(10, 3, 16, 16))))
    with pytest.raises(ValueError, match="larger than the pool"):
        ranking.top(11)


def test_empty_reference_set_is_named():
    model = small_bn_cnn()
    ctx = SelectionContext(model, ADAPTER, Items(torch.randn(4, 3, 16, 16)),
                           Items(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)),
                           Items(torch.zeros(0, 3, 16, 16)))
    with pytest.raises(ValueError, match="reference set"):
        ISAL(params="last").rank(ctx)


def test_model_that_outputs_nan_is_named():
    model = small_bn_cnn()
    pool = Items(torch.randn(6, 3, 16, 16))
    pool.x[4] = float("nan")
    params = select_parameters(model, "weights")
    with pytest.raises(NonFiniteError, match=r"NaN/inf for samples \[4\]"):
        influence(model, ADAPTER, DataLoader(pool, batch_size=3), torch.ones(sum(p.numel() for _, p in params)), params)
    with pytest.raises(NonFiniteError, match="NaN/inf"):
        labeled = DataLoader(Items(pool.x, torch.zeros(6, dtype=torch.long)), batch_size=3)
        reference_gradient(model, ADAPTER, labeled, params)
