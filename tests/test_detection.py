"""Detection in the engine: FCOS through the adapter, per-image influence equal to a per-image
loop, unscored images ranked last, box sanitation, VOC/COCO loaders (BCCD when present)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from isal_core.data.boxes import BoxProblems, clean_boxes, load_coco, load_voc, read_voc_xml
from isal_core.data.images import ImageRecord
from isal_core.influence.params import select_parameters
from isal_core.influence.pool import influence, influence_loop
from isal_core.influence.scorer import PoolScores
from isal_core.selection.base import influence_ranking
from isal_core.tasks.detection import HEAD_PARAMS, DetectionAdapter

try:
    from needs import BCCD_ZIP as BCCD
except ImportError:  # tests/ imported as a package
    from tests.needs import BCCD_ZIP as BCCD


def blob_images(folder: Path, n: int, seed: int = 0) -> list[ImageRecord]:
    """Images with one to three bright rectangles on a dark background, labeled by colour."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        w, h = 96 + 16 * (i % 3), 80
        pixels = torch.full((h, w, 3), 20, dtype=torch.uint8)
        boxes, labels = [], []
        for _ in range(1 + i % 3):
            x1, y1 = int(torch.randint(0, w - 30, (1,), generator=g)), int(torch.randint(0, h - 30, (1,), generator=g))
            x2, y2 = x1 + 20 + int(torch.randint(0, 10, (1,), generator=g)), y1 + 20
            c = int(torch.randint(0, 2, (1,), generator=g))
            pixels[y1:y2, x1:x2] = torch.tensor([(230, 40, 40), (40, 40, 230)][c], dtype=torch.uint8)
            boxes.append([x1, y1, x2, y2])
            labels.append(c)
        path = folder / f"img{i:02d}.png"
        Image.fromarray(pixels.numpy()).save(path)
        records.append(ImageRecord(path.name, str(path), {"boxes": boxes, "labels": labels}))
    return records


class Double(Dataset):
    """float64 images: the check of the arithmetic, free of float32's rounding at FCOS's kinks
    (a relu on the box regression, GIoU's min/max), where batch and single-image float32
    forwards may take different sub-gradients."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, target, index = self.dataset[i]
        return x.double(), target, index


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return blob_images(tmp_path_factory.mktemp("blobs"), 6)


def test_batched_image_influence_equals_a_per_image_loop(blobs):
    torch.manual_seed(0)
    adapter = DetectionAdapter(2, min_size=96, max_size=128, score_threshold=0.05)
    model = adapter.build_model().double().eval()
    params = select_parameters(model, HEAD_PARAMS)
    assert [n for n, _ in params] == HEAD_PARAMS  # the head's three final convolutions
    dataset = Double(adapter.dataset(blobs))
    s_test = torch.randn(sum(p.numel() for _, p in params), dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
    loader = DataLoader(dataset, batch_size=3, collate_fn=adapter.collate_fn)
    fast = influence(model, adapter, loader, s_test, params)
    loop = influence_loop(model, adapter, dataset, s_test, params)
    assert torch.allclose(fast, loop, rtol=1e-4, atol=0) and fast.abs().min() > 0
    # the three parts of each image's loss are all there: zeroing s_test for the box regression changes it
    names = [n for n, _ in params]
    sizes = [p.numel() for _, p in params]
    masked = s_test.clone()
    start = sum(sizes[:names.index("head.regression_head.bbox_reg.weight")])
    masked[start:start + sizes[names.index("head.regression_head.bbox_reg.weight")]] = 0
    assert not torch.allclose(influence(model, adapter, loader, masked, params), fast)


def test_images_without_a_pseudo_box_are_ranked_after_every_scored_one(blobs):
    adapter = DetectionAdapter(2, score_threshold=0.5)
    boxes = lambda *scores: {"boxes": [[0, 0, 1, 1]] * len(scores), "labels": [0] * len(scores),  # noqa: E731
                             "scores": list(scores)}
    predictions = [boxes(0.9), boxes(0.2), boxes(), boxes(0.6, 0.1), boxes(0.4), boxes(0.7)]
    influence_values = torch.tensor([0.5, -9.0, -8.0, -1.0, -7.0, 2.0])  # the unscored have the lowest values
    ranking = influence_ranking(PoolScores(influence_values, predictions), adapter, seed=0)
    order = ranking.order.tolist()
    assert order[:3] == [3, 0, 5]  # scored, by influence
    assert sorted(order[3:]) == [1, 2, 4]  # then the unscored
    assert ranking.scores[[1, 2, 4]].isinf().all()
    orders = {tuple(influence_ranking(PoolScores(influence_values, predictions), adapter, seed=s).order[3:].tolist())
              for s in range(20)}
    assert len(orders) > 1  # drawn at random among themselves (seeded)
    assert adapter.cost(predictions[3]) == 1 and adapter.unscored(predictions[2])


def loss_after_training(adapter, records, steps: int = 60) -> tuple[float, float, object]:
    """(mean loss before, after `steps` SGD steps, the model): training through the adapter."""
    from isal_core.settings import TrainSettings
    from isal_core.train.loop import train

    torch.manual_seed(0)
    model = adapter.build_model()
    dataset = adapter.dataset(records)
    loader = DataLoader(dataset, batch_size=3, collate_fn=adapter.collate_fn)

    def mean_loss():
        model.eval()
        with torch.no_grad():
            return float(torch.cat([adapter.loss(adapter.forward(model, x), t) for x, t, _ in loader]).mean())

    before = mean_loss()
    train(model, adapter, dataset, TrainSettings(epochs=1, min_steps=steps, lr=0.002, batch_size=3, milestones=[]))
    return before, mean_loss(), model


def test_training_lowers_the_loss_and_the_metric_is_map(blobs):
    from isal_core.train.evaluation import evaluate

    adapter = DetectionAdapter(2, min_size=96, max_size=128, score_threshold=0.3)
    before, after, model = loss_after_training(adapter, blobs)
    assert after < 0.85 * before
    metric = adapter.metric()
    loader = DataLoader(adapter.dataset(blobs), batch_size=3, collate_fn=adapter.collate_fn)
    value = evaluate(model, adapter, loader, "cpu")
    assert 0.0 <= value <= 1.0 and metric.name == "mAP@0.5"


def test_boxes_outside_the_image_are_clipped_and_empty_or_unknown_ones_dropped():
    problems = BoxProblems()
    boxes = torch.tensor([[10, 10, 50, 50], [-5, 0, 20, 30], [60, 10, 60, 40], [90, 90, 120, 130], [0, 0, 5, 5]])
    labels = torch.tensor([0, 1, 0, 1, 7])
    kept, kept_labels = clean_boxes(boxes, labels, width=100, height=100, num_classes=2, problems=problems)
    assert kept.tolist() == [[10, 10, 50, 50], [0, 0, 20, 30], [90, 90, 100, 100]] and kept_labels.tolist() == [0, 1, 1]
    assert problems.counts == {"box_clipped": 2, "box_degenerate": 1, "box_unknown_label": 1}


def test_voc_xml_and_coco_json_loaders(tmp_path):
    xml = ("<annotation><filename>a.jpg</filename><object><name>RBC</name><bndbox><xmin>1</xmin><ymin>2</ymin>"
           "<xmax>30</xmax><ymax>40</ymax></bndbox></object><object><name>zebra</name><bndbox><xmin>1</xmin>"
           "<ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>")
    label, unknown = read_voc_xml(xml, ["RBC", "WBC"])
    assert label == {"boxes": [[1.0, 2.0, 30.0, 40.0]], "labels": [0]} and unknown == ["zebra"]
    coco = {"images": [{"id": 1, "file_name": "b.jpg"}, {"id": 2, "file_name": "a.jpg"}],
            "categories": [{"id": 7, "name": "cell"}, {"id": 3, "name": "dot"}],
            "annotations": [{"image_id": 1, "category_id": 7, "bbox": [5, 6, 10, 20]},
                            {"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "iscrowd": 1}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    records, classes = load_coco(tmp_path / "ann.json", tmp_path)
    assert classes == ["dot", "cell"] and [r.id for r in records] == ["a.jpg", "b.jpg"]
    assert records[1].label == {"boxes": [[5, 6, 15, 26]], "labels": [1]} and records[0].label["boxes"] == []


@pytest.mark.needs("bccd")
def test_bccd_loads_with_its_splits_and_its_two_bad_boxes_are_counted():
    records, classes = load_voc(BCCD)
    assert classes == ["Platelets", "RBC", "WBC"] and len(records) == 364
    train, _ = load_voc(BCCD, "train", classes)
    test, _ = load_voc(BCCD, "test", classes)
    assert 0 < len(test) < len(train) < len(records) and not {r.id for r in train} & {r.id for r in test}
    dataset = DetectionAdapter(3).dataset(records)
    for i in range(len(dataset)):
        image, target, _ = dataset[i]
        assert target["boxes"].shape[1] == 4 and (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
    assert sum(dataset.problems.counts.values()) >= 2, dataset.problems.counts


def voc_tree(root: Path, n_train: int = 10, n_test: int = 6) -> Path:
    """A Pascal VOC tree (Annotations, JPEGImages, ImageSets/Main/{trainval,test}.txt) of blob images."""
    records = blob_images(root / "JPEGImages", n_train + n_test, seed=3)
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    names = ["red", "blue"]
    for r in records:
        objects = "".join(f"<object><name>{names[c]}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                          f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                          for b, c in zip(r.label["boxes"], r.label["labels"]))
        (root / "Annotations" / f"{Path(r.id).stem}.xml").write_text(
            f"<annotation><filename>{r.id}</filename>{objects}</annotation>")
    stems = [Path(r.id).stem for r in records]
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(stems[:n_train]) + "\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(stems[n_train:]) + "\n")
    return root


def test_detection_simulation_with_box_budgets_reports_curves_against_boxes(tmp_path):
    from isal_core.simulation.run import SimulationConfig, simulate

    data = voc_tree(tmp_path / "voc")
    config = SimulationConfig(data=str(data), out=str(tmp_path / "run"), task="detection", budget="boxes",
                              strategies=["random", "isal"], initial=6, step=4, rounds=2, seeds=[0], epochs=1,
                              min_steps=3, batch_size=4, lr=0.002, min_size=64, max_size=96, score_threshold=0.05,
                              reference_size=3, hessian_samples=0, weights=None, progress=False)
    out = simulate(config)
    rows = read_csv(out / "results.csv")
    assert len(rows) == 4 and all(int(r["boxes"]) > 0 for r in rows)
    sim_records, _ = load_voc(data, "trainval")
    for strategy in ("random", "isal"):
        state = json.loads((out / "state" / f"{strategy}-0.json").read_text())
        first, picks = state["rounds"][0]["added"], state["rounds"][1]["added"]
        true = [len(sim_records[i].label["boxes"]) for i in first]
        assert sum(true) >= 6 and sum(true[:-1]) < 6  # the initial set: the fewest random images with 6 true boxes
        assert 1 <= len(picks) and not set(picks) & set(first)
        boxes = {int(r["round"]): int(r["boxes"]) for r in rows if r["strategy"] == strategy}
        assert boxes[1] == sum(true) and boxes[2] == sum(true) + sum(len(sim_records[i].label["boxes"]) for i in picks)
    assert (out / "curves-boxes.png").exists() and "| random | 2 |" not in (out / "savings-boxes.md").read_text()
    assert "final boxes" in (out / "savings-boxes.md").read_text()


def read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_least_confidence_ranks_images_by_the_mean_score_of_their_boxes(blobs):
    from isal_core.learner import Learner

    adapter = DetectionAdapter(2, min_size=64, max_size=96, score_threshold=0.05)
    torch.manual_seed(0)
    model = adapter.build_model().eval()
    dataset = adapter.dataset(blobs)
    ranking = Learner(adapter).rank("least_confidence", model, dataset)
    with torch.no_grad():
        found = adapter.forward(model, [dataset[i][0] for i in range(len(dataset))]).detections()
    means = torch.tensor([float(d["scores"].mean()) if len(d["scores"]) else 0.0 for d in found])
    assert torch.allclose(ranking.scores, means, atol=1e-5)
    assert ranking.order.tolist() == torch.argsort(means, stable=True).tolist()


@pytest.mark.parametrize("edit", ["relabel", "delete"])
def test_box_influence_is_the_image_influence_minus_that_with_the_box_edited(blobs, edit):
    from isal_core.influence.params import flatten
    from isal_core.influence.review import box_review, review_order

    torch.manual_seed(0)
    adapter = DetectionAdapter(2, min_size=96, max_size=128, score_threshold=0.05)
    model = adapter.build_model().double().eval()
    params = select_parameters(model, HEAD_PARAMS)
    dataset = Double(adapter.dataset(blobs))
    s_test = torch.randn(sum(p.numel() for _, p in params), dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
    found = box_review(model, adapter, dataset, s_test, HEAD_PARAMS, batch_size=3, edit=edit)
    counts = [len(dataset[i][1]["labels"]) for i in range(len(dataset))]
    assert found.image.tolist() == [i for i, n in enumerate(counts) for _ in range(n)]
    assert found.box.tolist() == [j for n in counts for j in range(n)] and max(counts) > 1

    def direct(image, target):  # -s_test . grad loss(z, target), one image, autograd
        loss = adapter.loss(adapter.forward(model, [image]), [target]).sum()
        return -float(flatten(torch.autograd.grad(loss, [p for _, p in params])) @ s_test)

    relabeled = 0
    for k, (i, j) in enumerate(zip(found.image.tolist(), found.box.tolist())):
        image, target, _ = dataset[i]
        other = int(found.alternative[k])
        if edit == "delete":
            edited = {key: torch.cat([v[:j], v[j + 1:]]) for key, v in target.items()}
        elif other < 0:  # the model sees no other class there: nothing to relabel to, no gain
            assert float(found.influence[k]) == 0.0
            continue
        else:
            assert other != int(target["labels"][j])
            edited = dict(target, labels=target["labels"].clone())
            edited["labels"][j] = other
            relabeled += 1
        expected = direct(image, target) - direct(image, edited)
        assert abs(float(found.influence[k]) - expected) <= 1e-6 * max(1.0, abs(expected)), (i, j)
        assert expected != 0.0
    assert edit == "delete" or relabeled > 0
    assert ((found.disagreement >= 0) & (found.disagreement <= 1)).all()
    order = review_order(found, "combined")
    assert sorted(order) == list(range(len(order)))
    images = found.image_order("combined")  # each image once, where its worst box first appears
    assert images == list(dict.fromkeys(int(found.image[k]) for k in order))


def test_box_review_compares_with_the_model_detection_of_the_box_class():
    from isal_core.influence.review import _compare

    found = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 1]),
             "scores": torch.tensor([0.9, 0.8])}
    same, match, other = _compare(torch.tensor([0.0, 0, 10, 10]), 0, found)
    assert abs(same - 0.1) < 1e-6 and match["label"] == 0 and other is None  # no other class overlaps
    wrong, match, other = _compare(torch.tensor([0.0, 0, 10, 10]), 1, found)  # a class-0 object annotated 1
    assert wrong == 1.0 and match["label"] == 0 and match["box"] == [0.0, 0, 10, 10] and other == 0
    nothing, match, other = _compare(torch.tensor([50.0, 50, 60, 60]), 0, found)  # no object there
    assert nothing == 1.0 and match is None and other is None
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
    assert _compare(torch.tensor([0.0, 0, 10, 10]), 0, empty) == (1.0, None, None)
