"""H itself, checked independently of the Hessian-vector product that CG and LiSSA use.

The solver tests compare CG with `op.dense()`, which is built from the same `op.hvp`; these
check that `op.hvp` really is the Hessian of the MEAN training loss at the model's weights
(eval mode: BatchNorm on its running statistics), against `torch.func.hessian` of that
loss written out here, and against the closed form of softmax cross-entropy on a linear
model. A dropped 1/n or a doubled product fails them: the probe at the end shows it.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from isal_core.influence.gradients import HessianOperator
from isal_core.influence.params import select_parameters
from isal_core.tasks.classification import ClassificationAdapter

ADAPTER = ClassificationAdapter()
TOL = 1e-9  # float64 throughout


def mean_loss_hessian(model: nn.Module, names: list[str], x, y) -> torch.Tensor:
    """torch.func.hessian of the mean cross-entropy over (x, y) in the named parameters, eval mode."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    model.eval()

    def loss(flat):
        chunks = dict(zip(names, (c.view(s) for c, s in zip(flat.split(sizes), shapes))))
        out = torch.func.functional_call(model, {**params, **chunks}, (x,))
        return nn.functional.cross_entropy(out, y)

    flat = torch.cat([params[n].detach().flatten() for n in names])
    return torch.func.hessian(loss)(flat)


def check_hessian(op: HessianOperator, expected: torch.Tensor) -> None:
    """The operator's dense H equals `expected` (relative Frobenius error below TOL)."""
    got = op.dense()
    error = float((got - expected).norm().detach() / expected.norm())
    assert error < TOL, f"H differs from the independent Hessian by {error:.3g} (relative)"


def bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 3)).double()
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(16, 2, 6, 6, dtype=torch.float64))  # running statistics that are not 0 and 1
    return model.eval()


def data(n=20, shape=(2, 6, 6), classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("which", ["weights", "last", "all"])
def test_h_is_the_hessian_of_the_mean_training_loss_batchnorm_in_eval_mode(which):
    model, (x, y) = bn_cnn(), data()
    params = select_parameters(model, which)
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]  # uneven batches: the mean is over samples, not batches
    op = HessianOperator(model, ADAPTER, params, batches)
    check_hessian(op, mean_loss_hessian(model, [n for n, _ in params], x, y))
    assert not model.training


def test_h_of_a_linear_softmax_model_is_its_closed_form():
    """H = 1/n sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i, with J_i = [I_C (x) x_i^T, I_C] for (weight, bias)."""
    g = torch.Generator().manual_seed(2)
    n, d, c = 30, 4, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    model = nn.Linear(d, c).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(c, d, generator=g, dtype=torch.float64))
    p = model(x).softmax(1).detach()
    expected = torch.zeros(c * d + c, c * d + c, dtype=torch.float64)
    for i in range(n):
        jacobian = torch.cat([torch.kron(torch.eye(c, dtype=torch.float64), x[i:i + 1]),
                              torch.eye(c, dtype=torch.float64)], 1)
        expected += jacobian.T @ (torch.diag(p[i]) - torch.outer(p[i], p[i])) @ jacobian / n
    op = HessianOperator(model, ADAPTER, select_parameters(model, "all"), [(x, y)])
    check_hessian(op, expected)


def test_h_over_a_detectors_head_is_the_hessian_of_its_mean_loss():
    """FCOS's head (the three final convolutions): H v against forward-over-reverse torch.func on random v."""
    from isal_core.tasks.detection import DetectionAdapter

    adapter = DetectionAdapter(2, min_size=48, max_size=64, head_convs=1, fpn_channels=32)
    torch.manual_seed(0)
    model = adapter.build_model().double().eval()
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 48, 64, generator=g, dtype=torch.float64) for _ in range(3)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]], dtype=torch.float64), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 2.0, 60.0, 20.0], [1.0, 1.0, 9.0, 9.0]], dtype=torch.float64),
                "labels": torch.tensor([0, 1])},
               {"boxes": torch.zeros(0, 4, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.long)}]
    params = select_parameters(model, "head")
    names = [n for n, _ in params]
    op = HessianOperator(model, adapter, params, [(images, targets)])
    forward = Forward(adapter, model)

    def mean_loss(*weights):
        outputs = torch.func.functional_call(forward, {f"model.{n}": w for n, w in zip(names, weights)}, (images,))
        return adapter.loss(outputs, targets).mean()

    primals = tuple(p.detach() for _, p in params)
    for seed in range(3):
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        tangents = tuple(t.view_as(p) for t, p in zip(v.split([p.numel() for p in primals]), primals))
        _, hv = torch.func.jvp(torch.func.grad(mean_loss, argnums=tuple(range(len(primals)))), primals, tangents)
        expected = torch.cat([t.flatten() for t in hv])
        assert float((op.hvp(v) - expected).norm() / expected.norm()) < TOL


class Forward(nn.Module):
    """The adapter's forward as a module, so torch.func.functional_call can swap the model's weights."""

    def __init__(self, adapter, model: nn.Module):
        super().__init__()
        self.adapter, self.model = adapter, model

    def forward(self, inputs):
        return self.adapter.forward(self.model, inputs)


class Scaled(HessianOperator):
    """A wrong operator: `factor` x H (a doubled product, or a mean that lost its 1/n)."""

    def __init__(self, op: HessianOperator, factor: float):
        self.__dict__.update(op.__dict__)
        self.factor = factor

    def hvp(self, v, batch=None):
        return self.factor * super().hvp(v, batch)


@pytest.mark.parametrize("factor", [2.0, 0.5, 20.0])
def test_a_wrong_scale_of_h_fails_the_check(factor):
    model, (x, y) = bn_cnn(), data()
    params = select_parameters(model, "last")
    exact = mean_loss_hessian(model, [n for n, _ in params], x, y)
    check_hessian(HessianOperator(model, ADAPTER, params, [(x, y)]), exact)
    with pytest.raises(AssertionError, match="differs from the independent Hessian"):
        check_hessian(Scaled(HessianOperator(model, ADAPTER, params, [(x, y)]), factor), exact)
