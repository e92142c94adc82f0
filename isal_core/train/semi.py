"""A semi-supervised learner for a head on frozen features: the labels spread over a kNN graph of
the embeddings, trusted where the graph is sure or the supervised head agrees.

Label spreading (Zhou et al., 2004): W is a symmetric kNN affinity of the L2-normalised embeddings
(cosine similarity cubed, k neighbours), S = D^-1/2 W D^-1/2, and F = (1 - alpha)(I - alpha S)^-1 Y
for the one-hot rows Y of the labeled samples, by iterating F <- alpha S F + (1 - alpha) Y. Trusting
every spread label gains about 10 points at 10 labels and loses 2 to 5 at 160 to 320 on CIFAR-10
(../shared/notes/pretrained-weights.md), so a pool sample becomes a training item only where the
spread is sure (certainty 1 - entropy / log C of the spread distribution at least `sure`) or agrees
with the head fit on the labels alone, weighted by its certainty; the labeled items hold half of the
training weight (repeated, so no single item's weight is large under SGD). Pseudo-labels live only
in training: they are never annotations.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from ..tasks.frozen import Embeddings

CHUNK = 2048


def knn_graph(x: Tensor, k: int) -> Tensor:
    """S = D^-1/2 W D^-1/2 (sparse, symmetric) of the k-nearest-neighbour graph of the rows of `x`
    by cosine similarity, W = max(similarity, 0)^3 symmetrised; isolated rows keep a zero row."""
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=x.dtype), (n, n))
    xn = F.normalize(x.float(), dim=1)  # float32: half the time of float64 for similarities good to 1e-7
    rows, cols, vals = [], [], []
    for start in range(0, n, CHUNK):
        sim = xn[start:start + CHUNK] @ xn.T
        here = torch.arange(start, start + len(sim))
        sim[torch.arange(len(sim)), here] = -math.inf  # not its own neighbour
        v, i = sim.topk(k, dim=1)
        rows.append(here.repeat_interleave(k))
        cols.append(i.flatten())
        vals.append(v.flatten().clamp(min=0) ** 3)
    r, c, v = torch.cat(rows), torch.cat(cols), torch.cat(vals).to(x.dtype)
    w = torch.sparse_coo_tensor(torch.stack([torch.cat([r, c]), torch.cat([c, r])]), torch.cat([v, v]) / 2,
                                (n, n), check_invariants=True).coalesce()  # an edge found from both ends counts once
    degree = torch.sparse.sum(w, 1).to_dense()
    scale = torch.where(degree > 0, degree.clamp(min=1e-300) ** -0.5, torch.zeros_like(degree))
    i = w.indices()
    return torch.sparse_coo_tensor(i, w.values() * scale[i[0]] * scale[i[1]], (n, n),
                                   check_invariants=True).coalesce()


def spread(graph: Tensor, seeds: Tensor, labels: Tensor, num_classes: int, alpha: float = 0.99,
           iters: int = 50) -> Tensor:
    """F [n, C]: the seeds' one-hot labels, each class's scaled to sum 1, spread over `graph` (iterations of the
    closed form)."""
    y = torch.zeros(graph.shape[0], num_classes, dtype=graph.dtype)
    y[seeds, labels] = 1.0
    y = y / y.sum(0).clamp(min=1)  # each class's seeds hold one unit of mass: no class floods the graph
    if graph.layout == torch.sparse_coo:
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is all that is used
            warnings.simplefilter("ignore", UserWarning)
            graph = graph.to_sparse_csr()  # 6x faster products than COO here
    f = y.clone()
    for _ in range(iters):
        f = alpha * (graph @ f) + (1 - alpha) * y
    return f


def certainty(f: Tensor) -> tuple[Tensor, Tensor]:
    """(the spread label, 1 - the normalised entropy of the spread distribution) of each row; 0 where
    nothing reached the row."""
    total = f.sum(1, keepdim=True)
    p = torch.where(total > 0, f / total.clamp(min=1e-300), torch.zeros_like(f))
    entropy = -(p * p.clamp(min=1e-300).log()).sum(1) / math.log(f.shape[1])
    return p.argmax(1), torch.where(total.squeeze(1) > 0, 1 - entropy, torch.zeros_like(entropy))


def training_set(labeled: Embeddings, pool: Embeddings, head_says: Tensor, num_classes: int, k: int = 20,
                 alpha: float = 0.99, sure: float = 0.5) -> Embeddings:
    """Labeled items (one-hot targets, repeated to half of the weight) and the trusted pool items (their
    spread label, scaled by certainty: cross-entropy with a target w * onehot is w times the loss)."""
    y = torch.as_tensor(labeled.labels, dtype=torch.long)
    x = torch.cat([labeled.x, pool.x])
    f = spread(knn_graph(x, k), torch.arange(len(y)), y, num_classes, alpha)
    label, cert = certainty(f[len(y):])
    trusted = (cert > 0) & ((cert >= sure) | (label == head_says))
    weight = cert[trusted] / cert[trusted].mean() if trusted.any() else cert[:0]  # mean 1: SGD steps as on labels
    repeat = max(1, round(len(weight) / len(y)))
    targets = torch.cat([F.one_hot(y, num_classes).to(x.dtype).repeat(repeat, 1),
                         weight[:, None] * F.one_hot(label[trusted], num_classes).to(x.dtype)])
    return Embeddings(torch.cat([labeled.x.repeat(repeat, 1), pool.x[trusted]]), list(targets))
