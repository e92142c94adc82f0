"""Image datasets for the engine: scan folders, zip archives and CSV lists into records.

Datasets are described by lightweight `ImageRecord`s (id, path, label) so that the
active-learning loop can pass pools around, split and relabel them without touching
pixels. Images are only decoded in `ImageDataset.__getitem__`.

A path may point inside a zip archive ("/data/cifar.zip/train/cat/0001.jpg"), so large
datasets can be read in place without extracting them.
"""
from __future__ import annotations

import csv
import io
import os
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError, ImageDecodeError
from .transforms import classification_transform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class ImageRecord:
    """One image: `id` is stable across machines (path relative to the scanned root),
    `path` is where to read it (a file, or "archive.zip/member"), `label` the target
    (a class index for classification; whatever the task's adapter trains on)."""

    id: str
    path: str
    label: Any = None


# ---------------------------------------------------------------------------
# zip-aware file access

# One open ZipFile per (process, archive): re-reading the central directory per image
# would be slow, and a handle inherited through fork() shares its file offset with the
# parent, so DataLoader workers must open their own (hence the pid in the key).
_ZIP_HANDLES: dict[tuple[int, str], zipfile.ZipFile] = {}
_ZIP_LOCK = threading.Lock()


def _split_zip(path: str) -> tuple[str, str] | None:
    """Split "a/b.zip/c/d.jpg" into ("a/b.zip", "c/d.jpg"); None if no zip file is on the path."""
    if ".zip" not in path.lower():
        return None
    parts = path.replace(os.sep, "/").split("/")
    for i in range(1, len(parts) + 1):
        candidate = "/".join(parts[:i])
        if candidate.lower().endswith(".zip") and os.path.isfile(candidate):
            return candidate, "/".join(p for p in parts[i:] if p)
    return None


def _zip_handle(archive: str) -> zipfile.ZipFile:
    key = (os.getpid(), os.path.abspath(archive))
    with _ZIP_LOCK:
        handle = _ZIP_HANDLES.get(key)
        if handle is None:
            # Drop handles inherited from a parent process; they are unusable here.
            for stale in [k for k in _ZIP_HANDLES if k[0] != key[0]]:
                del _ZIP_HANDLES[stale]
            handle = _ZIP_HANDLES[key] = zipfile.ZipFile(key[1])
        return handle


def read_bytes(path: str) -> bytes:
    split = _split_zip(path)
    if split is None:
        with open(path, "rb") as f:
            return f.read()
    archive, member = split
    handle = _zip_handle(archive)
    with _ZIP_LOCK:  # ZipFile reads from one shared file object; serialise them
        return handle.read(member)


def open_image(path: str | os.PathLike, name: str | None = None) -> Image.Image:
    """Decode an image (plain file or zip member) as RGB, or raise ImageDecodeError naming `path` (or
    `name`): one bad file in a pool of thousands is easy to find. Also for an image of more than Pillow's
    MAX_IMAGE_PIXELS (a decompression bomb: a small file that decodes to gigabytes), checked from the
    header before decoding."""
    path = os.fspath(path)
    shown = name or path  # (a download is checked before it has its name)
    try:
        data = read_bytes(path)
        with Image.open(io.BytesIO(data)) as img:
            if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
                raise ImageDecodeError(f"cannot decode image {shown}: {img.width} x {img.height} pixels is over "
                                       f"the {Image.MAX_IMAGE_PIXELS}-pixel limit (a decompression bomb?)")
            img.load()
            return _rgb(img)
    except KeyError:
        raise ImageDecodeError(f"cannot decode image {shown}: no such member in the archive") from None
    except ImageDecodeError:
        raise
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise ImageDecodeError(f"cannot decode image {shown}: {exc}") from exc


def _rgb(img: Image.Image) -> Image.Image:
    """Any mode as 8-bit RGB: 16/32-bit and float greyscale scaled to 0..255 first (a plain convert clips a
    16-bit image to white); palette, greyscale, CMYK and alpha convert as Pillow does."""
    if img.mode.startswith(("I", "F")):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(values.max()), 255.0)
        img = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


# ---------------------------------------------------------------------------
# scanning


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(rel: str) -> bool:
    # Skip dotfiles and macOS archive litter ("__MACOSX/", "._x.jpg"): never real images.
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.split("/"))


def _list_images(root: str) -> tuple[str, list[str]]:
    """Return (base, rels): every image under `root` is at base + "/" + rel, rel uses "/"."""
    if os.path.isdir(root):
        base = os.path.abspath(root)
        rels = []
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            dirnames.sort()
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), base).replace(os.sep, "/")
                if _is_image(name) and not _is_hidden(rel):
                    rels.append(rel)
        return base, sorted(rels)

    split = _split_zip(root)
    if split is None:
        raise DataError(f"dataset not found: {root}")
    archive, prefix = split
    try:
        names = _zip_handle(archive).namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read zip archive {archive}: {exc}") from exc
    prefix = prefix.strip("/")
    start = prefix + "/" if prefix else ""
    rels = sorted(
        n[len(start):]
        for n in names
        if n.startswith(start) and not n.endswith("/") and _is_image(n) and not _is_hidden(n[len(start):])
    )
    if prefix and not any(n.startswith(start) for n in names):
        raise DataError(f"dataset not found: {root} (no '{prefix}/' folder in {archive})")
    base = os.path.abspath(archive) + (f"/{prefix}" if prefix else "")
    return base, rels


def scan_images(root: str) -> list[ImageRecord]:
    """Every image under `root` (folder, zip, or "x.zip/prefix"), unlabeled, sorted by id."""
    base, rels = _list_images(root)
    if not rels:
        raise DataError(f"no images found under {root}")
    return [ImageRecord(id=rel, path=f"{base}/{rel}") for rel in rels]


def scan_image_folder(root: str) -> tuple[list[str], list[ImageRecord]]:
    """Labeled ImageFolder layout: the class is the first-level subfolder name.

    Classes are sorted so indices are reproducible; images directly under `root` are
    ignored (they have no class).
    """
    base, rels = _list_images(root)
    rels = [r for r in rels if "/" in r]
    classes = sorted({r.split("/", 1)[0] for r in rels})
    if not classes:
        raise DataError(f"no class subfolders with images found under {root}")
    index = {c: i for i, c in enumerate(classes)}
    records = [ImageRecord(id=r, path=f"{base}/{r}", label=index[r.split("/", 1)[0]]) for r in rels]
    return classes, records


def read_list(path: str, classes: list[str] | None = None) -> tuple[list[str], list[ImageRecord]]:
    """Read a CSV list with header `path[,label][,id]`.

    Relative paths are resolved against the CSV's folder so the list travels with its
    images. Labels are class names; an empty label means unlabeled. Without `classes`,
    the classes are the sorted distinct labels. Rows keep file order.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [(c or "").strip() for c in (reader.fieldnames or [])]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read list {path}: {exc}") from exc
    if "path" not in header:
        raise DataError(f"list {path} needs a header with a 'path' column, found {header}")
    if not rows:
        raise DataError(f"list {path} has no rows")

    if classes is None:
        classes = sorted({row["label"] for row in rows if row.get("label")})
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    folder = os.path.dirname(os.path.abspath(path))
    records, seen = [], set()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if not row["path"]:
            raise DataError(f"list {path} line {line}: empty path")
        name = row.get("label", "")
        if name and name not in index:
            raise DataError(f"list {path} line {line}: unknown label {name!r} (classes: {classes})")
        rid = row.get("id") or row["path"]
        if rid in seen:
            raise DataError(f"list {path} line {line}: duplicate id {rid!r}")
        seen.add(rid)
        records.append(
            ImageRecord(id=rid, path=os.path.join(folder, row["path"]), label=index[name] if name else None)
        )
    return classes, records


def load_records(
    spec: str, classes: list[str] | None = None, labeled: bool = True
) -> tuple[list[str], list[ImageRecord]]:
    """One entry point for every dataset form: *.csv list, folder, zip or zip prefix.

    Passing `classes` (e.g. from the training set) keeps label indices consistent
    between the labeled, pool and test sets.
    """
    if spec.lower().endswith(".csv"):
        return read_list(spec, classes)
    if not labeled:
        return (list(classes) if classes is not None else []), scan_images(spec)
    found, records = scan_image_folder(spec)
    if classes is None:
        return found, records
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise DataError(f"class folder(s) {unknown} under {spec} are not in classes {classes}")
    return classes, [replace(r, label=index[found[r.label]]) for r in records]


# ---------------------------------------------------------------------------
# tensors


class ImageDataset(Dataset):
    """Records -> (image tensor, label or -1, index); the index lets callers map
    per-sample results (gradients, scores) back to records."""

    def __init__(self, records: Sequence[ImageRecord], transform=None):
        self.records = list(records)
        self.transform = transform if transform is not None else classification_transform()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        record = self.records[i]
        x = self.transform(open_image(record.path))
        return x, (-1 if record.label is None else record.label), i

    @property
    def labels(self) -> list[int | None]:
        return [r.label for r in self.records]


class TensorDataset3(Dataset):
    """In-memory tensors with the same (x, y, index) item shape as ImageDataset,
    for synthetic data and tests."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise DataError(f"x has {len(x)} items but y has {len(y)}")
        self.x = x
        self.y = torch.as_tensor(y, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), i

    @property
    def labels(self) -> list[int | None]:
        return [None if v < 0 else v for v in self.y.tolist()]
