"""Dataset scanning, zip access, CSV lists and tensor datasets."""

import os
import zipfile

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

try:
    import needs
except ImportError:  # tests/ imported as a package
    from tests import needs

from isal_core.data.images import (
    DataError,
    ImageDataset,
    ImageDecodeError,
    ImageRecord,
    TensorDataset3,
    classification_transform,
    load_records,
    open_image,
    read_list,
    scan_image_folder,
    scan_images,
)

CIFAR_ZIP = str(needs.CIFAR_ZIP)
COLORS = {"cat": (200, 30, 30), "dog": (30, 30, 200), "emu": (30, 200, 30)}


def _write_image(path, color, size=(12, 10)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture
def image_tree(tmp_path):
    """root/<class>/<n>.png|jpg for three classes, plus noise that scanning must skip."""
    root = tmp_path / "train"
    for c, color in COLORS.items():
        for n in range(3):
            ext = ".png" if n % 2 else ".JPG"
            _write_image(str(root / c / f"{n:04d}{ext}"), color)
    (root / "cat" / "notes.txt").write_text("not an image")
    _write_image(str(root / "cat" / ".hidden.png"), (0, 0, 0))
    return root


@pytest.fixture
def image_zip(image_tree, tmp_path):
    """The same tree inside a zip under the prefix "data/train/"."""
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for dirpath, _, files in os.walk(image_tree):
            for name in files:
                full = os.path.join(dirpath, name)
                zf.write(full, "data/train/" + os.path.relpath(full, image_tree).replace(os.sep, "/"))
    return archive


def test_scan_folder_classes_labels_and_ids(image_tree):
    classes, records = scan_image_folder(str(image_tree))
    assert classes == ["cat", "dog", "emu"]
    assert len(records) == 9
    assert [r.id for r in records] == sorted(r.id for r in records)
    assert records[0] == ImageRecord("cat/0000.JPG", str(image_tree / "cat" / "0000.JPG"), 0)
    assert {r.label for r in records if r.id.startswith("emu/")} == {2}


def test_zip_and_folder_scans_agree(image_tree, image_zip):
    classes_dir, rec_dir = scan_image_folder(str(image_tree))
    classes_zip, rec_zip = scan_image_folder(f"{image_zip}/data/train")
    assert classes_zip == classes_dir
    assert [(r.id, r.label) for r in rec_zip] == [(r.id, r.label) for r in rec_dir]
    assert rec_zip[0].path == f"{image_zip}/data/train/cat/0000.JPG"
    # Same pixels either way (PNG members are lossless).
    png = next(r for r in rec_zip if r.id.endswith(".png"))
    assert open_image(png.path).getpixel((0, 0)) == COLORS["cat"]
    assert [r.id for r in scan_images(f"{image_zip}/data")] == ["train/" + r.id for r in rec_dir]


def test_scan_errors_name_the_root(tmp_path, image_zip):
    with pytest.raises(DataError, match="nowhere"):
        scan_image_folder(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        scan_images(str(tmp_path / "empty"))
    flat = tmp_path / "flat"
    _write_image(str(flat / "a.png"), (1, 2, 3))
    with pytest.raises(DataError, match="flat"):  # images but no class folders
        scan_image_folder(str(flat))
    with pytest.raises(DataError, match="missing"):
        scan_image_folder(f"{image_zip}/missing")


def test_open_image_converts_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (5, 4), 77).save(path)
    img = open_image(str(path))
    assert img.mode == "RGB" and img.size == (5, 4) and img.getpixel((0, 0)) == (77, 77, 77)


def test_corrupt_and_missing_images_raise_with_path(tmp_path, image_zip):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(os.urandom(300))
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        open_image(str(bad))
    with pytest.raises(ImageDecodeError, match="absent.png"):
        open_image(str(tmp_path / "absent.png"))
    with pytest.raises(ImageDecodeError, match="nope.png"):
        open_image(f"{image_zip}/data/train/nope.png")
    # a truncated JPEG is a decode error too, not a silently half-grey image
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageDecodeError, match="cut.jpg"):
        open_image(str(cut))
    assert issubclass(ImageDecodeError, DataError) and issubclass(DataError, ValueError)


def test_read_list_resolves_paths_and_maps_labels(image_tree, tmp_path):
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label,id\ntrain/dog/0001.png,dog,a\ntrain/cat/0000.JPG,cat,b\ntrain/emu/0002.JPG,,c\n")
    classes, records = read_list(str(csv_path))
    assert classes == ["cat", "dog"]
    assert [(r.id, r.label) for r in records] == [("a", 1), ("b", 0), ("c", None)]
    assert records[0].path == str(tmp_path / "train" / "dog" / "0001.png")
    assert open_image(records[0].path).getpixel((0, 0)) == COLORS["dog"]
    classes, records = read_list(str(csv_path), classes=["emu", "dog", "cat"])
    assert classes == ["emu", "dog", "cat"] and [r.label for r in records] == [1, 2, None]


def test_read_list_errors(tmp_path):
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label\na.png,cat\nb.png,zebra\n")
    with pytest.raises(DataError) as info:
        read_list(str(csv_path), classes=["cat", "dog"])
    assert "'zebra'" in str(info.value) and "line 3" in str(info.value)
    csv_path.write_text("file,label\na.png,cat\n")
    with pytest.raises(DataError, match="'path' column"):
        read_list(str(csv_path))
    csv_path.write_text("path\na.png\na.png\n")
    with pytest.raises(DataError, match="duplicate id"):
        read_list(str(csv_path))


def test_load_records_dispatch_and_class_mapping(image_tree, tmp_path):
    classes, records = load_records(str(image_tree), classes=["emu", "dog", "cat", "owl"])
    assert classes == ["emu", "dog", "cat", "owl"]
    assert {r.id.split("/")[0]: r.label for r in records} == {"emu": 0, "dog": 1, "cat": 2}
    with pytest.raises(DataError, match="emu"):
        load_records(str(image_tree), classes=["cat", "dog"])
    classes, records = load_records(str(image_tree), classes=["x"], labeled=False)
    assert classes == ["x"] and len(records) == 9 and all(r.label is None for r in records)
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("path,label\ntrain/cat/0000.JPG,cat\n")
    classes, records = load_records(str(csv_path))
    assert classes == ["cat"] and records[0].label == 0


def test_transform_resizes_any_size_and_normalizes(tmp_path):
    img = Image.new("RGB", (50, 20), (255, 255, 255))
    x = classification_transform(32)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.full((32, 32), (1 - 0.4914) / 0.2470), atol=1e-4)
    torch.manual_seed(0)
    xt = classification_transform(16, train=True)(img)
    assert xt.shape == (3, 16, 16)


def test_image_dataset_in_multiworker_loader_from_zip(image_zip):
    _, records = scan_image_folder(f"{image_zip}/data/train")
    records = records + [ImageRecord("u", records[0].path)]  # one unlabeled item
    ds = ImageDataset(records, classification_transform(8))
    open_image(records[0].path)  # parent caches a zip handle before workers fork
    assert ds.labels[-1] is None and len(ds) == 10
    x0, y0, i0 = ds[3]
    assert x0.shape == (3, 8, 8) and y0 == records[3].label and i0 == 3
    serial = list(DataLoader(ds, batch_size=4, num_workers=0))
    parallel = list(DataLoader(ds, batch_size=4, num_workers=2))
    for (xa, ya, ia), (xb, yb, ib) in zip(serial, parallel):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    assert torch.cat([b[1] for b in parallel]).tolist() == [r.label for r in records[:-1]] + [-1]


def test_tensor_dataset3():
    ds = TensorDataset3(torch.arange(12.0).view(4, 3), torch.tensor([1, 0, -1, 2]))
    x, y, i = ds[2]
    assert torch.equal(x, torch.tensor([6.0, 7.0, 8.0])) and y == -1 and isinstance(y, int) and i == 2
    assert ds.labels == [1, 0, None, 2] and len(ds) == 4
    with pytest.raises(ValueError):
        TensorDataset3(torch.zeros(3, 2), torch.zeros(2))


@pytest.mark.needs("cifar10")
def test_real_cifar_zip_in_place():
    classes, records = scan_image_folder(CIFAR_ZIP + "/test")
    assert len(classes) == 10 and "airplane" in classes and "truck" in classes
    assert all(r.path.startswith(CIFAR_ZIP + "/test/") for r in records[:5])
    picked = records[:: len(records) // 6][:6]
    x, y, _ = next(iter(DataLoader(ImageDataset(picked), batch_size=6)))
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [r.label for r in picked]
    assert open_image(picked[0].path).size == (32, 32)
