"""Detection data: images with boxes, box sanitation, and Pascal VOC / COCO loaders.

A detection record is an `ImageRecord` whose label is {"boxes": [[x1, y1, x2, y2], ...] in
the image's pixels, "labels": [class index, ...]} (None: unlabeled). Real annotations
hold boxes that leave the image or have no area (BCCD has two): `clean_boxes` clips
them to the image and drops what has no area left, and says how many it changed, so a
caller can count them instead of crashing FCOS (which asserts on degenerate boxes).
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..errors import DataError
from .images import ImageRecord, open_image, read_bytes


@dataclass
class BoxProblems:
    """What `clean_boxes` changed, by kind (clipped, dropped: no area, unknown label)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, kind: str, n: int = 1) -> None:
        if n:
            self.counts[kind] += n


def clean_boxes(boxes: Tensor, labels: Tensor, width: int, height: int, num_classes: int,
                problems: BoxProblems | None = None) -> tuple[Tensor, Tensor]:
    """Boxes clipped to the image; those with no area left or a label outside 0..num_classes-1 dropped."""
    problems = problems if problems is not None else BoxProblems()
    boxes = boxes.reshape(-1, 4).float()
    labels = labels.reshape(-1).long()
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
    problems.add("box_clipped", int((clipped != boxes).any(1).sum()))
    known = (labels >= 0) & (labels < num_classes)
    problems.add("box_unknown_label", int((~known).sum()))
    area = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    problems.add("box_degenerate", int((known & ~area).sum()))
    keep = known & area
    return clipped[keep], labels[keep]


class DetectionDataset(Dataset):
    """Records -> (image tensor [3, H, W] in 0..1, {"boxes", "labels"} or None, index)."""

    def __init__(self, records, num_classes: int):
        self.records = list(records)
        self.num_classes = num_classes
        self.problems = BoxProblems()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        record = self.records[i]
        image = open_image(record.path)
        x = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
        if record.label is None:
            return x, None, i
        boxes = torch.as_tensor(record.label["boxes"], dtype=torch.float32)
        labels = torch.as_tensor(record.label["labels"], dtype=torch.int64)
        boxes, labels = clean_boxes(boxes, labels, image.width, image.height, self.num_classes, self.problems)
        return x, {"boxes": boxes, "labels": labels}, i

    @property
    def labels(self) -> list:
        return [r.label for r in self.records]


# ---------------------------------------------------------------------------
# loaders


def read_voc_xml(text: str | bytes, classes: list[str]) -> tuple[dict, list[str]]:
    """One Pascal VOC annotation -> ({"boxes", "labels"}, names of objects whose class is not in `classes`)."""
    root = ET.fromstring(text)
    boxes, labels, unknown = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if box is None:
            continue
        coords = [float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")]
        if name not in classes:
            unknown.append(name)
            continue
        boxes.append(coords)
        labels.append(classes.index(name))
    return {"boxes": boxes, "labels": labels}, unknown


def voc_classes(root: str | Path) -> list[str]:
    """The sorted object names of every annotation under `root` (a folder or a .zip)."""
    names = set()
    for _, xml in _voc_annotations(root):
        names.update((o.findtext("name") or "").strip() for o in ET.fromstring(xml).iter("object"))
    return sorted(n for n in names if n)


def load_voc(root: str | Path, split: str | None = None, classes: list[str] | None = None):
    """(records, classes) of a Pascal VOC tree (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt)
    in a folder or a zip (e.g. ../shared/data/bccd-voc.zip); `split` None = every annotation."""
    classes = classes or voc_classes(root)
    wanted = None
    if split is not None:
        listing = [m for m in _members(root) if m.endswith(f"ImageSets/Main/{split}.txt")]
        if not listing:
            raise DataError(f"{root} has no ImageSets/Main/{split}.txt")
        wanted = set(read_bytes(_join(root, listing[0])).decode().split())
    records = []
    for member, xml in _voc_annotations(root):
        stem = Path(member).stem
        if wanted is not None and stem not in wanted:
            continue
        label, _ = read_voc_xml(xml, classes)
        folder = member.rsplit("Annotations/", 1)[0]
        filename = ET.fromstring(xml).findtext("filename") or f"{stem}.jpg"
        records.append(ImageRecord(f"{folder}JPEGImages/{filename}", _join(root, f"{folder}JPEGImages/{filename}"),
                                   label))
    if not records:
        raise DataError(f"{root}: no VOC annotations" + (f" in split {split!r}" if split else ""))
    return sorted(records, key=lambda r: r.id), classes


def load_coco(annotations: str | Path, images: str | Path):
    """(records, classes) of a COCO detection JSON; boxes [x, y, w, h] become [x1, y1, x2, y2]."""
    data = json.loads(Path(annotations).read_text())
    categories = sorted(data.get("categories", []), key=lambda c: c["id"])
    classes = [c["name"] for c in categories]
    index = {c["id"]: i for i, c in enumerate(categories)}
    by_image: dict[int, dict] = {im["id"]: {"boxes": [], "labels": []} for im in data.get("images", [])}
    for a in data.get("annotations", []):
        if a.get("iscrowd") or a["image_id"] not in by_image:
            continue
        x, y, w, h = a["bbox"]
        by_image[a["image_id"]]["boxes"].append([x, y, x + w, y + h])
        by_image[a["image_id"]]["labels"].append(index[a["category_id"]])
    records = [ImageRecord(im["file_name"], str(Path(images) / im["file_name"]), by_image[im["id"]])
               for im in sorted(data.get("images", []), key=lambda im: im["file_name"])]
    if not records:
        raise DataError(f"{annotations}: no images")
    return records, classes


def _members(root: str | Path) -> list[str]:
    root = str(root)
    if root.endswith(".zip"):
        import zipfile

        with zipfile.ZipFile(root) as z:
            return z.namelist()
    base = Path(root)
    return [str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()]


def _join(root: str | Path, member: str) -> str:
    return f"{root}/{member}"


def _voc_annotations(root: str | Path):
    for member in sorted(_members(root)):
        if "Annotations/" in member and member.endswith(".xml"):
            yield member, read_bytes(_join(root, member))
