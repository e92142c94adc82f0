"""Influence on what is already labeled: which annotations are most likely wrong, most harmful first.

For a labeled sample z with its given label y, `I(z, y) = -grad l(R)^T (H + damping I)^-1
grad l(z, y)` is (up to the factor 1/n of the mean training loss) how much removing z from
the training set would change the reference loss: I > 0 means training on (z, y) raised the
loss on R, which is what a wrong label does (Koh & Liang, 2017, found mislabeled training
points this way). It is computed exactly as the pool's influence (isal_core.influence.pool),
with the given label in place of the pseudo-label, so it costs one forward and one backward
per batch. Beside it:
- `loss`: the model's disagreement with the annotation, -log p(y | z);
- `self_influence`: grad l(z, y)^T (H + damping I)^-1 grad l(z, y), how much z alone moves the
  model; for a linear head (the default model) by EK-FAC (`linear_self_influence`), else a dense solve;
- `oof_loss`: the loss from heads fit on the other folds (`Learner.cross_fitted_loss`, frozen heads).
`review_order` ranks by one signal or the mean rank of influence and loss, most suspicious first.

Detection is reviewed per box (`box_review`): a box's influence is I(z, B) - I(z, B edited),
what the reference loss would gain from correcting that box in the image's annotation, all of
an image's boxes from one forward pass. The default edit gives the box the class the model
detects there (its best-fitting detection of another class, Koh & Liang's relabeling); the other
deletes it. Its `loss` signal is the model's disagreement with the box, 1 - the best IoU x score
of a detection of the box's class. An image is as suspicious as its worst box. Measured on BCCD
(docs/results.md, "Annotation review"), a box's influence follows its class more than its
correctness (a step on any box of a rare class lowers R's loss, a direct finite-step check
agrees), so the backend ranks boxes by the disagreement.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import SelectionError
from ..tasks.base import TaskAdapter
from ..train import evaluation
from .params import flatten, select_parameters
from .pool import influence, influence_of_targets

#: Signals a review ranks by; "combined" / "oof_combined": the mean rank of influence and loss / oof_loss
SIGNALS = ("influence", "loss", "self_influence", "combined", "loo_loss", "oof_loss", "oof_combined")
#: Above this many parameters self-influence is not computed (a dense damped Hessian: dim^2 floats).
MAX_DENSE = 12_000


class _GivenTargets:
    """The adapter with each sample's annotated label standing in for its pseudo-label."""

    def __init__(self, adapter: TaskAdapter):
        self._adapter, self._targets = adapter, None

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def to_device(self, batch, device):
        inputs, targets = self._adapter.to_device(batch, device)
        self._targets = self._adapter.check_targets(targets, "the labeled set")
        return inputs, targets

    def pseudo_targets(self, outputs, top_k: int = 1):
        return self._targets


@dataclass
class Review:
    """Per labeled sample, in dataset order: I(z, y) on R, the loss, self-influence, the model's prediction."""

    influence: Tensor
    loss: Tensor
    self_influence: Tensor | None
    predictions: list
    oof_loss: Tensor | None = None  # the loss under models fit without the sample (Learner.cross_fitted_loss)

    def scores(self, signal: str = "combined") -> Tensor:
        """Higher = more suspicious, for `signal` (SIGNALS)."""
        if signal == "influence":
            return self.influence
        if signal == "loss":
            return self.loss
        if signal == "self_influence":
            if self.self_influence is None:
                raise SelectionError("self-influence was not computed for this model (too many parameters)")
            return self.self_influence
        if signal in ("combined", "oof_combined"):
            other = self.scores("oof_loss" if signal == "oof_combined" else "loss")
            return (_ranks(self.influence) + _ranks(other)) / 2
        if signal == "loo_loss":  # removing z moves the weights by H^-1 g_z / n: its own loss rises by g^T H^-1 g / n
            return self.loss + self.scores("self_influence") / len(self.loss)
        if signal == "oof_loss":
            if self.oof_loss is None:
                raise SelectionError("the cross-fitted loss was not computed (Learner.review computes it for a head "
                                     "on frozen features)")
            return self.oof_loss
        raise SelectionError(f"unknown review signal {signal!r}; choose from {', '.join(SIGNALS)}")


def _ranks(x: Tensor) -> Tensor:
    """0 for the smallest value, n - 1 for the largest (ties by position)."""
    out = torch.empty(len(x), dtype=torch.float64)
    out[torch.argsort(x.double(), stable=True)] = torch.arange(len(x), dtype=torch.float64)
    return out


def review(model: nn.Module, adapter: TaskAdapter, labeled: Dataset, s_test: Tensor, params, device="cpu",
           batch_size: int = 64, hessian=None, damping: float = 0.0) -> Review:
    """The review signals of every labeled sample. `params` as the scorer's (names or a set name). Self-influence
    with `hessian` (an isal_core HessianOperator over the same parameters: a dense solve), else for a linear head
    over all its parameters with `damping` > 0 (EK-FAC)."""
    if len(labeled) == 0:
        raise SelectionError("the labeled set is empty: there is nothing to review")
    chosen = select_parameters(model, params)
    loader = DataLoader(labeled, batch_size=batch_size, shuffle=False, collate_fn=adapter.collate_fn)
    predictions: dict[int, object] = {}

    def keep(indices, outputs):
        predictions.update(zip(indices.tolist(), adapter.predict(outputs)))

    values = influence(model, _GivenTargets(adapter), loader, s_test.to(device), chosen, device=device,
                       num_samples=len(labeled), on_outputs=keep)
    losses = torch.cat([adapter.loss(out, targets).detach().double().cpu()
                        for out, targets, _ in evaluation.outputs(model, adapter, loader, device)])
    selfish = None
    if hessian is not None:
        selfish = _self_influence(model, adapter, labeled, chosen, hessian, damping, device)
    elif isinstance(model, nn.Linear) and len(chosen) == len(list(model.parameters())) and damping > 0:
        selfish = _linear_self_influence(model, adapter, labeled, damping, device, model.bias is not None)
    return Review(values.double().cpu(), losses, selfish, [predictions[i] for i in range(len(labeled))])


def _self_influence(model, adapter, labeled: Dataset, params: Sequence, hessian, damping: float, device):
    """g_z^T (H + damping I)^-1 g_z for each labeled z, with a dense solve (None above MAX_DENSE parameters)."""
    if hessian.dim > MAX_DENSE:
        return None
    dense = hessian.dense().detach()
    factor = torch.linalg.cholesky(dense + damping * torch.eye(len(dense), dtype=dense.dtype, device=dense.device))
    tensors = [p for _, p in params]
    out = torch.empty(len(labeled), dtype=torch.float64)
    with evaluation.eval_mode(model):
        for i in range(len(labeled)):
            item = labeled[i]
            batch = adapter.collate_fn([item]) if adapter.collate_fn is not None else \
                (item[0].unsqueeze(0), torch.as_tensor([item[1]]))
            inputs, targets = adapter.to_device(batch, device)
            loss = adapter.loss(adapter.forward(model, inputs), targets).sum()
            g = flatten(torch.autograd.grad(loss, tensors)).detach().to(dense.dtype)
            solved = torch.cholesky_solve(g.unsqueeze(1), factor).squeeze(1)
            out[i] = float(g @ solved)
    return out


def _linear_self_influence(model: nn.Linear, adapter, labeled: Dataset, damping: float, device, bias: bool) -> Tensor:
    """Self-influence under the cross-entropy of a linear head (its weight and bias): the batch's inputs are the
    head's inputs; see `linear_self_influence`."""
    inputs, labels = [], []
    for batch in DataLoader(labeled, batch_size=512, collate_fn=adapter.collate_fn):
        x, y = adapter.to_device(batch, device)
        inputs.append(x.detach().double().cpu())
        labels.append(y.cpu())
    x = torch.cat(inputs)
    with torch.no_grad():
        probs = model.double()(x.to(next(model.parameters()).device)).softmax(1).cpu()
    a = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) if bias else x
    return linear_self_influence(a, probs, torch.cat(labels), damping)


def linear_self_influence(a: Tensor, probs: Tensor, labels: Tensor, damping: float) -> Tensor:
    """g_n^T (H + damping I)^-1 g_n for a softmax-linear model, g_n = (p_n - y_n) (x) a_n, H the mean of
    (diag p_n - p_n p_n^T) (x) a_n a_n^T, solved in the eigenbasis V (x) U of its Kronecker factors
    S = mean(diag p - p p^T) and A = mean(a a^T) with the exact diagonal of H in that basis (EK-FAC): exact
    when H is Kronecker-factored (every p_n alike), an approximation otherwise (tests/test_review.py)."""
    a, probs = a.double(), probs.double()
    n = len(a)
    delta = probs - torch.nn.functional.one_hot(labels.long(), probs.shape[1]).double()
    curvature = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    _, u = torch.linalg.eigh(a.T @ a / n)
    _, v = torch.linalg.eigh(curvature.mean(0))
    pa = (a @ u) ** 2  # [N, D]: (u_i . a_n)^2
    pv = torch.einsum("ck,nce,ek->nk", v, curvature, v)  # [N, C]: v_j^T M_n v_j
    eigen = pv.T @ pa / n  # [C, D]: H's diagonal in the Kronecker eigenbasis
    return (((delta @ v) ** 2) * (pa @ (1.0 / (eigen + damping)).T)).sum(1)


def review_order(result: Review, signal: str = "combined") -> list[int]:
    """Dataset positions, most suspicious first."""
    return torch.argsort(-result.scores(signal).double(), stable=True).tolist()


@dataclass
class BoxReview:
    """Per annotated box, image by image in dataset order: its image's position, its index in that
    image's annotation, its influence (the edit `box_review` names), the model's disagreement with it,
    the model's detection that overlaps it most ({"label", "box", "score"}, or None), and the class of
    the model's best-fitting detection of another class (-1: none overlaps; a relabel then gains 0)."""

    image: Tensor
    box: Tensor
    influence: Tensor
    disagreement: Tensor
    matches: list
    alternative: Tensor

    def scores(self, signal: str = "combined") -> Tensor:
        """Higher = more suspicious; `loss` is the disagreement (there is no per-box loss to read)."""
        if signal == "influence":
            return self.influence
        if signal == "loss":
            return self.disagreement
        if signal == "combined":
            return (_ranks(self.influence) + _ranks(self.disagreement)) / 2
        raise SelectionError(f"boxes are reviewed by influence, loss or combined, not {signal!r}")

    def image_order(self, signal: str = "combined") -> list[int]:
        """Image positions by their most suspicious box, most suspicious first (images without a box:
        not listed)."""
        seen: dict[int, None] = {}
        for i in review_order(self, signal):
            seen.setdefault(int(self.image[i]), None)
        return list(seen)


#: What a box's influence compares its annotation with: the box relabeled to the model's other class,
#: or the box deleted.
BOX_EDITS = ("relabel", "delete")


def box_review(model: nn.Module, adapter, labeled: Dataset, s_test: Tensor, params, device="cpu",
               batch_size: int = 4, edit: str = "relabel") -> BoxReview:
    """The review signals of every annotated box of a detection set (targets {"boxes", "labels"}).
    A box's influence is I(z, B) - I(z, B edited): `relabel` gives the box the class of the model's
    best-fitting detection of another class, `delete` removes it."""
    if edit not in BOX_EDITS:
        raise SelectionError(f"a box is edited by {' or '.join(BOX_EDITS)}, not {edit!r}")
    if len(labeled) == 0:
        raise SelectionError("the labeled set is empty: there is nothing to review")
    chosen = select_parameters(model, params)
    loader = DataLoader(labeled, batch_size=batch_size, shuffle=False, collate_fn=adapter.collate_fn)
    image, box, values, disagreement, matches, alternative = [], [], [], [], [], []
    compared: list = []  # per image of the batch: [(disagreement, match, alternative)] per box

    def edits(outputs, given: list[dict]) -> list[list[dict]]:
        with torch.no_grad():  # post-processing needs no graph
            found = [{k: v.detach() for k, v in d.items()} for d in outputs.detections()]
        compared[:] = [[_compare(xy, label, d) for xy, label in zip(t["boxes"], t["labels"].tolist())]
                       for t, d in zip(given, found)]
        if edit == "delete":
            return _each_box_edited(given, lambda i, t, j: {k: torch.cat([v[:j], v[j + 1:]]) for k, v in t.items()})
        return _each_box_edited(given, lambda i, t, j: _relabeled(t, j, compared[i][j][2]))

    for indices, derivatives, _, given in influence_of_targets(model, _GivenTargets(adapter), loader, s_test,
                                                               chosen, edits, device):
        for b, (i, target, boxes) in enumerate(zip(indices.tolist(), given, compared)):
            n = len(target["labels"])
            image += [i] * n
            box += range(n)
            values.append(derivatives[0, b] - derivatives[1:n + 1, b])
            for d, match, other in boxes:
                disagreement.append(d)
                matches.append(match)
                alternative.append(-1 if other is None else other)
    if not image:
        raise SelectionError("the labeled images hold no boxes: there is nothing to review")
    return BoxReview(torch.as_tensor(image), torch.as_tensor(box), torch.cat(values).double(),
                     torch.as_tensor(disagreement, dtype=torch.float64), matches,
                     torch.as_tensor(alternative, dtype=torch.long))


def _each_box_edited(given: list[dict], edit_box) -> list[list[dict]]:
    """Set 0: every image's annotation; set j: image i's with its box j - 1 edited,
    `edit_box(i, target, j - 1)` (whole when it has fewer boxes)."""
    most = max(len(t["labels"]) for t in given)
    return [given] + [[edit_box(i, t, j) if j < len(t["labels"]) else t for i, t in enumerate(given)]
                      for j in range(most)]


def _relabeled(target: dict, j: int, label: int | None) -> dict:
    """`target` with box j given `label` (unchanged when None)."""
    if label is None:
        return target
    out = dict(target, labels=target["labels"].clone())
    out["labels"][j] = label
    return out


def _compare(given: Tensor, label: int, found: dict) -> tuple[float, dict | None, int | None]:
    """(1 - the best IoU x score of a detection of `label`, the detection with the best IoU x score (None
    when no detection overlaps the box), the class of the best-fitting detection of another class (None
    when none overlaps))."""
    if len(found["boxes"]) == 0:
        return 1.0, None, None
    from torchvision.ops import box_iou

    fit = box_iou(given.to(found["boxes"]).unsqueeze(0), found["boxes"])[0] * found["scores"]
    same = found["labels"] == label
    best = int(fit.argmax())
    match = None if fit[best] <= 0 else {"label": int(found["labels"][best]), "box": found["boxes"][best].tolist(),
                                         "score": float(found["scores"][best])}
    other = torch.where(same, torch.zeros_like(fit), fit)
    alternative = int(found["labels"][int(other.argmax())]) if float(other.max()) > 0 else None
    return 1.0 - (float(fit[same].max()) if same.any() else 0.0), match, alternative
