"""Multi-label datasets: a CSV list per split, and the CIFAR-10 mosaics the tagging protocol is measured on.

A tagged split is a CSV with header `path,tags`: the image (relative to the CSV's folder) and its tags separated by
";" (empty: the image has none, a valid answer). A record's label is the sorted list of its tags' indices.

The mosaics: each image is a 2x2 mosaic (64 px) of four CIFAR-10 images, tagged with the classes it shows (1 to 4
of 10). The four are drawn without replacement (a seeded shuffle cut in fours), so no CIFAR image is in two
mosaics: a validation cut of the train mosaics shares no picture with the pool.
"""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path

from PIL import Image

from ..errors import DataError
from .cifar10 import cache_dir, cifar10_root
from .images import ImageRecord, load_records, open_image

SEPARATOR = ";"
MOSAIC_SEED = 0


def read_tags(path: str, classes: list[str] | None = None) -> tuple[list[str], list[ImageRecord]]:
    """(classes, records) of a `path,tags` CSV; without `classes` they are the sorted distinct tags."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []) or "tags" not in (reader.fieldnames or []):
                raise DataError(f"tag list {path} needs a header with 'path' and 'tags' columns, found "
                                f"{reader.fieldnames}")
            rows = [(row["path"].strip(), [t.strip() for t in (row["tags"] or "").split(SEPARATOR) if t.strip()])
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read tag list {path}: {exc}") from exc
    if not rows:
        raise DataError(f"tag list {path} has no rows")
    classes = list(classes) if classes is not None else sorted({t for _, tags in rows for t in tags})
    index = {c: i for i, c in enumerate(classes)}
    folder = os.path.dirname(os.path.abspath(path))
    records = []
    for line, (name, tags) in enumerate(rows, start=2):
        unknown = [t for t in tags if t not in index]
        if not name or unknown:
            raise DataError(f"tag list {path} line {line}: " + (f"unknown tag(s) {unknown} (tags: {classes})"
                                                                 if name else "empty path"))
        records.append(ImageRecord(name, os.path.join(folder, name), sorted({index[t] for t in tags})))
    return classes, records


def write_mosaics(source: str, out: Path, counts: dict[str, int]) -> None:
    """out/<split>.csv and out/<split>/*.png: counts[split] mosaics of the split's images of `source` (a CIFAR-10
    style root: <split>/<class>/*), each of four images no other mosaic shows."""
    for split, n in counts.items():
        classes, records = load_records(f"{source}/{split}")
        records = random.Random(MOSAIC_SEED).sample(records, len(records))
        if 4 * n > len(records):
            raise DataError(f"{n} mosaics of {split} need {4 * n} images; {source}/{split} has {len(records)}")
        (out / split).mkdir(parents=True, exist_ok=True)
        with open(out / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "tags"])
            for k in range(n):
                four = records[4 * k:4 * k + 4]
                canvas = Image.new("RGB", (64, 64))
                for j, r in enumerate(four):
                    canvas.paste(open_image(r.path).convert("RGB").resize((32, 32)), ((j % 2) * 32, (j // 2) * 32))
                canvas.save(out / split / f"{k:05d}.png")
                writer.writerow([f"{split}/{k:05d}.png", SEPARATOR.join(sorted({classes[r.label] for r in four}))])


def cifar10_mosaics(train: int = 3600, test: int = 600) -> str:
    """The CIFAR-10 mosaic dataset (train.csv, test.csv and their images), made once under ~/.cache/isal."""
    cache = cache_dir() / f"cifar10-mosaics-{train}-{test}"
    if not (cache / ".complete").exists():
        write_mosaics(cifar10_root(), cache, {"train": train, "test": test})
        (cache / ".complete").touch()
    return str(cache)
