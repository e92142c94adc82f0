"""Data hygiene from the frozen embeddings: near-duplicate groups, leaks into the reference set, outliers.

    found = find_hygiene(x, thumbnails)                 # x: one L2-normalisable embedding per image
    leaks = find_leaks(found, roles)                    # roles: "labeled" / "pool" / "reference" per row
    order = hygienic_order(order, pool_rows, found, roles)   # duplicates and outliers served last

Two images are near-duplicates when their embeddings' cosine is >= `duplicate_cosine`; or when it is >=
`candidate_cosine` and one's 8x8 grey thumbnail (mean removed; mirrored too) correlates >= `thumbnail_correlation`
with the thumbnail of the other's centre crop at one of SCALES (JPEG re-compression and a crop move the embedding
more than the thumbnail). Groups are the connected pairs; each image is compared with its 5 nearest. An
outlier's distance to its k-th nearest neighbour (k = 1 % of the images, at least 10: a few dozen strangers of one
kind are each other's neighbours at smaller k) is more than `outlier_z` robust deviations (1.4826 x the median
absolute deviation) above the median; outliers join no group. The thresholds were chosen with
`python -m bench.hygiene --split explore` (CIFAR-10 training images with planted copies and strangers,
EfficientNet-Lite0; never the images `bench.hygiene` measures on): the outlier rule is relative and holds for any
backbone, the cosines are Lite0's.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from isal_core.data.images import open_image


@dataclass(frozen=True)
class HygieneThresholds:
    duplicate_cosine: float = 0.92
    candidate_cosine: float = 0.70
    thumbnail_correlation: float = 0.985
    outlier_z: float = 4.0
    outlier_k_fraction: float = 0.01
    outlier_min_k: int = 10


@dataclass
class Hygiene:
    """Rows of the embeddings: `groups` (each >= 2 rows, sorted), `outliers` (rows), each row's outlier `distance`
    (to its k-th neighbour) and the `threshold` it was compared with."""

    groups: list[list[int]]
    outliers: list[int]
    distance: np.ndarray
    threshold: float
    k: int
    thresholds: HygieneThresholds = field(default_factory=HygieneThresholds)

    def group_of(self) -> dict[int, int]:
        return {row: g for g, rows in enumerate(self.groups) for row in rows}


#: The centre crops each thumbnail is also taken of: a copy cropped by up to a fifth matches one of them.
SCALES = (1.0, 0.9, 0.8)


def thumbnail(path: str) -> np.ndarray:
    """An image's 8x8 grey thumbnails of its centre crops at SCALES, each mean removed, unit norm (a JPEG is
    decoded at a reduced scale where it can be): shape (len(SCALES), 8, 8)."""
    image = open_image(path)
    image.draft("L", (64, 64))
    grey = image.convert("L")
    w, h = grey.size
    out = []
    for scale in SCALES:
        dx, dy = w * (1 - scale) / 2, h * (1 - scale) / 2
        a = np.asarray(grey.resize((8, 8), Image.BILINEAR, box=(dx, dy, w - dx, h - dy)), dtype=np.float32)
        a = a - a.mean()
        out.append(a / (np.linalg.norm(a) + 1e-6))
    return np.stack(out)


def neighbours(x: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's `k` most similar other rows (cosine, highest first): blockwise, never an N x N matrix."""
    values, indices = [], []
    for start in range(0, len(x), chunk):
        sim = x[start:start + chunk] @ x.T
        rows = torch.arange(start, min(start + chunk, len(x)))
        sim[rows - start, rows] = -2.0  # not its own neighbour
        top = sim.topk(k, dim=1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


def find_hygiene(x: torch.Tensor, thumbnails: Callable[[int], np.ndarray] | None = None,
                 thresholds: HygieneThresholds = HygieneThresholds()) -> Hygiene:
    """Near-duplicate groups and outliers among the rows of `x` (module docstring); `thumbnails(row)` gives a
    row's thumbnail (None: the embeddings alone, JPEG copies found less often)."""
    n, t = len(x), thresholds
    if n < 2:
        return Hygiene([], [], np.zeros(n), float("inf"), 0, t)
    x = torch.nn.functional.normalize(x.float(), dim=1)
    k = min(n - 1, max(t.outlier_min_k, round(t.outlier_k_fraction * n)))
    sim, idx = neighbours(x, max(k, 2))
    distance = (1 - sim[:, k - 1]).clamp(min=0).double().numpy()
    median = float(np.median(distance))
    spread = 1.4826 * float(np.median(np.abs(distance - median)))
    threshold = median + t.outlier_z * spread
    outliers = [int(i) for i in np.flatnonzero(distance > threshold)] if spread > 0 else []
    pairs = _duplicate_pairs(sim[:, :5], idx[:, :5], thumbnails, t)
    strange = set(outliers)
    groups = _connected(n, [(i, j) for i, j in pairs if i not in strange and j not in strange])
    return Hygiene(groups, outliers, distance, threshold, k, t)


def _duplicate_pairs(sim: torch.Tensor, idx: torch.Tensor, thumbnails, t: HygieneThresholds) -> set[tuple[int, int]]:
    pairs, memo = set(), {}

    def thumbs(row: int) -> tuple[np.ndarray, np.ndarray]:
        """(its whole thumbnail and its mirror image, flat: 2 x 64; every scale's: S x 64)."""
        if row not in memo:
            a = thumbnails(row).reshape(-1, 8, 8)
            memo[row] = (np.stack([a[0].ravel(), a[0][:, ::-1].ravel()]), a.reshape(len(a), -1))
        return memo[row]

    def alike(i: int, j: int) -> float:
        """The best correlation of one's whole thumbnail (or its mirror image) with a crop of the other's."""
        (whole_i, crops_i), (whole_j, crops_j) = thumbs(i), thumbs(j)
        return float(max((whole_i @ crops_j.T).max(), (whole_j @ crops_i.T).max()))

    for i, (values, rows) in enumerate(zip(sim.tolist(), idx.tolist())):
        for s, j in zip(values, rows):
            if s < t.candidate_cosine:
                break
            pair = (min(i, j), max(i, j))
            if pair not in pairs and (s >= t.duplicate_cosine or (thumbnails is not None
                                                                  and alike(i, j) >= t.thumbnail_correlation)):
                pairs.add(pair)
    return pairs


def _connected(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """The groups (>= 2 rows) the pairs connect (union-find)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in sorted({r for p in pairs for r in p}):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def find_leaks(found: Hygiene, roles: Sequence[str]) -> list[dict]:
    """Each reference row with a near-duplicate outside the reference set: {"reference": row, "copies": rows,
    "roles": theirs}. A copy labeled for training inflates the metric on R; one in the pool would, once labeled."""
    leaks = []
    for group in found.groups:
        others = [r for r in group if roles[r] != "reference"]
        for r in group:
            if roles[r] == "reference" and others:
                leaks.append({"reference": r, "copies": others, "roles": [roles[o] for o in others]})
    return leaks


def deferred(found: Hygiene, roles: Sequence[str], rank: dict[int, int]) -> dict[int, str]:
    """The pool rows to serve after the rest, with why: an outlier; a near-duplicate of a labeled or reference
    row; a group's member after its best-ranked pool member (`rank`: row -> place in the order)."""
    why = {r: "outlier" for r in found.outliers if roles[r] == "pool"}
    for group in found.groups:
        pool = sorted((r for r in group if roles[r] == "pool"), key=lambda r: rank.get(r, len(rank)))
        known = [r for r in group if roles[r] != "pool"]
        for r in pool[0 if known else 1:]:
            why[r] = f"near-duplicate of a {roles[known[0]]} task" if known else "near-duplicate of a pool task"
    return why


def hygienic_order(order: Sequence[int], pool_rows: Sequence[int], found: Hygiene,
                   roles: Sequence[str]) -> tuple[list[int], dict[int, str]]:
    """`order` (pool positions, best first) with the deferred pool tasks moved behind the rest: duplicates, then
    outliers, each in their own order; and {pool position: why} of those moved."""
    rank = {pool_rows[p]: place for place, p in enumerate(order)}
    why = deferred(found, roles, rank)
    moved = {p: why[pool_rows[p]] for p in order if pool_rows[p] in why}
    kept = [p for p in order if p not in moved]
    duplicates = [p for p in order if p in moved and moved[p] != "outlier"]
    return kept + duplicates + [p for p in order if moved.get(p) == "outlier"], moved
