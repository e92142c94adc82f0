"""s_test solvers against a direct solve of the damped Hessian of a convex model."""
import pytest
import torch
from torch import nn

from isal_core.influence.gradients import HessianOperator, reference_gradient
from isal_core.influence.params import select_parameters
from isal_core.influence.stest import CG, Identity, LiSSA, SolverError, make_solver
from isal_core.tasks.classification import ClassificationAdapter

DAMPING = 0.05


@pytest.fixture(scope="module")
def problem():
    """Multinomial logistic regression (convex), float64, with an exact damped solve."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    model = nn.Linear(6, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 6, generator=g, dtype=torch.float64) * 0.5)
    adapter = ClassificationAdapter()
    params = select_parameters(model, "all")
    batches = [(x, y)]
    op = HessianOperator(model, adapter, params, batches)
    ref = [(x[i:i + 8], y[i:i + 8], torch.arange(i, i + 8)) for i in range(0, 40, 8)]
    v = reference_gradient(model, adapter, ref, params)
    hessian = op.dense()
    exact = torch.linalg.solve(hessian + DAMPING * torch.eye(len(v), dtype=v.dtype), v)
    return op, v, hessian, exact


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_dense_hessian_is_symmetric_psd(problem):
    _, _, hessian, _ = problem
    assert torch.allclose(hessian, hessian.T, atol=1e-10)
    assert torch.linalg.eigvalsh(hessian).min() > -1e-10 * float(hessian.abs().max())


def test_cg_matches_direct_solve(problem):
    op, v, _, exact = problem
    result = CG(damping=DAMPING, tol=1e-10, max_iter=200).solve(op, v)
    assert rel(result.s_test, exact) < 1e-4
    assert result.info["iterations"] <= len(v) + 1


def test_lissa_full_batch_matches_direct_solve(problem):
    op, v, hessian, exact = problem
    top = float(torch.linalg.eigvalsh(hessian).max())
    result = LiSSA(damping=DAMPING, scale=2 * top, depth=400, repeats=1, batch_size=0).solve(op, v)
    assert rel(result.s_test, exact) < 1e-2


def test_lissa_stochastic_is_close(problem):
    op, v, hessian, exact = problem
    top = float(torch.linalg.eigvalsh(hessian).max())
    result = LiSSA(damping=DAMPING, scale=4 * top, depth=1500, repeats=4, batch_size=16, seed=1).solve(op, v)
    cosine = float(torch.nn.functional.cosine_similarity(result.s_test, exact, dim=0))
    assert cosine > 0.99
    assert rel(result.s_test, exact) < 0.1


def test_lissa_too_small_scale_is_a_clear_error(problem):
    op, v, _, _ = problem
    with pytest.raises(SolverError, match="raise the LiSSA scale"):
        LiSSA(damping=DAMPING, scale=1e-3, depth=500, repeats=1, batch_size=0, backoff=0).solve(op, v)


def test_lissa_backs_off_to_a_finite_answer(problem, caplog):
    op, v, _, exact = problem
    result = LiSSA(damping=DAMPING, scale=0.01, depth=400, repeats=1, batch_size=0, backoff=4).solve(op, v)
    assert torch.isfinite(result.s_test).all()
    assert result.info["scales"][0] > 0.01
    assert "retrying with scale" in caplog.text
    assert rel(result.s_test, exact) < 5e-2


def test_identity_returns_the_gradient(problem):
    op, v, _, _ = problem
    assert torch.equal(Identity().solve(op, v).s_test, v)


def test_make_solver_names_and_refuses_options_it_does_not_take():
    assert isinstance(make_solver("cg", damping=1.0, max_iter=3), CG)
    with pytest.raises(ValueError, match=r"solver 'cg' takes no option\(s\) \['scale'\]"):
        make_solver("cg", damping=1.0, scale=3)  # a LiSSA option with CG is never silently dropped
    with pytest.raises(ValueError, match="unknown s_test solver"):
        make_solver("newton")


def test_empty_labeled_set_is_an_error(problem):
    op, *_ = problem
    with pytest.raises(ValueError, match="labeled set is empty"):
        HessianOperator(op.model, op.adapter, select_parameters(op.model, "all"), [])


def test_empty_reference_set_is_an_error(problem):
    op, *_ = problem
    with pytest.raises(ValueError, match="reference set is empty"):
        reference_gradient(op.model, op.adapter, [], select_parameters(op.model, "all"))


class _Indefinite:
    """An operator with one negative eigenvalue, to exercise CG's curvature guard."""

    def __init__(self, eigenvalues):
        self.matrix = torch.diag(torch.tensor(eigenvalues, dtype=torch.float64))

    def hvp(self, v, batch=None):
        return self.matrix @ v


def test_cg_negative_curvature_is_reported_not_silent(caplog):
    op = _Indefinite([5.0, 3.0, -4.0])
    with pytest.raises(SolverError, match="non-positive curvature"):
        CG(damping=0.5).solve(op, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    result = CG(damping=0.5).solve(op, torch.tensor([1.0, 1.0, 0.3], dtype=torch.float64))
    assert result.info["stopped"] == "negative curvature" and "truncated CG" in caplog.text
    assert torch.isfinite(result.s_test).all()
