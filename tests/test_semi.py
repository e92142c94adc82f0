"""The semi-supervised learner on frozen features (isal_core.train.semi) against answers worked out by hand
and by a direct solve."""
import torch

from isal_core.learner import Learner
from isal_core.settings import EngineSettings
from isal_core.tasks.frozen import Embeddings
from isal_core.train import semi


class Head:
    """The frozen adapter's head path on given embeddings (no backbone, no images)."""

    from isal_core.tasks.frozen import FrozenFeatureAdapter as _Adapter

    def __new__(cls, dim: int, classes: int):
        adapter = object.__new__(cls._Adapter)
        adapter.num_classes, adapter.head, adapter._dim = classes, "linear", dim
        adapter._backbone = torch.nn.Identity()
        return adapter


def two_lines(n: int = 60, gap: float = 1.0):
    """Two parallel segments, y = 0 (class 0) and y = gap (class 1), x in [0, 10], in 2-D, lifted off the origin so
    cosine neighbours follow the segments; one label each at opposite ends."""
    x = torch.linspace(0, 10, n, dtype=torch.float64)
    points = torch.cat([torch.stack([x, torch.zeros(n, dtype=torch.float64)], 1),
                        torch.stack([x, torch.full((n,), gap, dtype=torch.float64)], 1)])
    points = torch.cat([points, torch.full((2 * n, 1), 40.0, dtype=torch.float64)], 1)  # a third axis: cosine ~ L2
    labels = [0] * n + [1] * n
    return points, labels, [0, 2 * n - 1]  # the left end of line 0, the right end of line 1


def learner(**settings):
    return Learner(Head(3, 2), EngineSettings(device="cpu", min_steps=300, lr=0.5, **settings), seed=0)


def test_spread_equals_the_closed_form():
    torch.manual_seed(0)
    x = torch.randn(40, 5, dtype=torch.float64)
    graph = semi.knn_graph(x, 6)
    dense = graph.to_dense()
    assert torch.allclose(dense, dense.T) and (dense >= 0).all()
    seeds, labels = torch.tensor([0, 7, 19, 23]), torch.tensor([0, 1, 2, 2])
    y = torch.zeros(40, 3, dtype=torch.float64)
    y[seeds, labels] = torch.tensor([1, 1, 0.5, 0.5], dtype=torch.float64)  # class 2's two seeds share its unit
    exact = 0.1 * torch.linalg.solve(torch.eye(40, dtype=torch.float64) - 0.9 * dense, y)
    assert torch.allclose(semi.spread(graph, seeds, labels, 3, alpha=0.9, iters=400), exact, atol=1e-12)


def test_two_lines_one_label_each_the_semi_learner_labels_them_where_the_head_cannot():
    points, labels, seeds = two_lines()
    rest = [i for i in range(len(points)) if i not in seeds]
    labeled = Embeddings(points[seeds], [labels[i] for i in seeds])
    pool = Embeddings(points[rest], [None] * len(rest))
    truth = torch.tensor([labels[i] for i in rest])
    right = lambda model: (model(points[rest]).argmax(1) == truth).double().mean().item()  # noqa: E731
    supervised = learner().fit(labeled, pool)
    semi_head = learner(learner="semi", semi_neighbours=4).fit(labeled, pool)
    assert right(supervised) < 0.8  # the boundary between two labeled ends cuts both lines
    assert right(semi_head) == 1.0


def test_with_every_task_labeled_the_semi_learner_is_the_supervised_head():
    points, labels, _ = two_lines(20)
    labeled = Embeddings(points, labels)
    empty = Embeddings(points[:0], [])
    a = learner().fit(labeled, empty)
    b = learner(learner="semi").fit(labeled, empty)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_bad_input_gives_a_model_not_an_error():
    points, labels, _ = two_lines(10)
    pool = Embeddings(points[2:], [None] * 18)
    one_class = learner(learner="semi").fit(Embeddings(points[:2], [0, 0]), pool)
    assert one_class(points).argmax(1).eq(0).all()
    single = learner(learner="semi").fit(Embeddings(points[:1], [1]), pool)
    assert single(points).argmax(1).eq(1).all()
    same = torch.ones(12, 3, dtype=torch.float64)  # every embedding identical
    dup = learner(learner="semi").fit(Embeddings(same[:2], [0, 1]), Embeddings(same[2:], [None] * 10))
    assert torch.isfinite(dup(same)).all()
    lone = learner(learner="semi").fit(Embeddings(points[:2], [0, 1]), Embeddings(points[5:6], [None]))
    assert torch.isfinite(lone(points)).all()
