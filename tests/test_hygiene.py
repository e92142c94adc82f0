"""Data hygiene's known answers on real images and the default embedding (EfficientNet-Lite0): copies and lightly
augmented copies are grouped, a reference image copied into the data is a leak, a constant image and images of
other domains are outliers, a clean set reports nothing; odd inputs (one image, all identical, none) get answers;
the served order puts duplicates and outliers last; `isal hygiene` writes the CSVs."""
from __future__ import annotations

import csv
import io
import random
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from isal_core.cli import main
from isal_core.data.images import ImageRecord, load_records, open_image
from isal_core.selection.hygiene import Hygiene, find_hygiene, find_leaks, hygienic_order, thumbnail
from isal_core.settings import EngineSettings
from isal_core.tasks.frozen import EmbeddingCache, classification_adapter

try:
    from needs import BCCD_ZIP, CIFAR_ZIP, need
except ImportError:  # tests/ imported as a package
    from tests.needs import BCCD_ZIP, CIFAR_ZIP, need

CLEAN = 60


def copies(image: Image.Image) -> list[Image.Image]:
    """An exact copy, a mirror image, a JPEG re-compression at quality 50, a crop of 1 px resized back."""
    w, h = image.size
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=50)
    return [image.copy(), image.transpose(Image.FLIP_LEFT_RIGHT), Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
            image.crop((1, 1, w - 1, h - 1)).resize((w, h))]


def strangers() -> list[Image.Image]:
    """A grey frame, uniform noise, a blood-cell photo: no CIFAR-10 class."""
    with zipfile.ZipFile(BCCD_ZIP) as z:
        photo = sorted(m for m in z.namelist() if m.lower().endswith(".jpg"))[0]
        cells = Image.open(io.BytesIO(z.read(photo))).convert("RGB")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return [Image.new("RGB", (32, 32), (128, 128, 128)), Image.fromarray(noise), cells]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """(records, x): CLEAN distinct CIFAR-10 training images, then the copies of the first four (one of each
    kind, of images 0..3), then the strangers; x their Lite0 embeddings."""
    need("cifar10")
    need("bccd")
    root = tmp_path_factory.mktemp("hygiene")
    originals = random.Random(3).sample(load_records(f"{CIFAR_ZIP}/train")[1], CLEAN)
    made = [open_image(r.path).convert("RGB") for r in originals]
    made += [copies(made[i])[i] for i in range(4)] + strangers()
    records = []
    for i, im in enumerate(made):
        path = root / f"{i:03d}.png"
        im.save(path)
        records.append(ImageRecord(path.name, str(path), 0))
    adapter = classification_adapter(EngineSettings(device="cpu"), 10, torch.device("cpu"), 64)
    adapter.cache = EmbeddingCache(root / "cache")
    return records, adapter.dataset(records).x


def thumbs(records):
    return lambda row: thumbnail(records[row].path)


def test_copies_are_grouped_and_strangers_are_outliers(images):
    records, x = images
    found = find_hygiene(x, thumbs(records))
    assert found.groups == [[i, CLEAN + i] for i in range(4)]  # exact, mirrored, re-compressed, cropped
    assert found.outliers == [CLEAN + 4, CLEAN + 5, CLEAN + 6]  # grey, noise, blood cells
    assert all(found.distance[r] > found.threshold for r in found.outliers)


def test_a_clean_set_reports_nothing(images):
    records, x = images
    found = find_hygiene(x[:CLEAN], thumbs(records))
    assert found.groups == [] and found.outliers == []


def test_a_reference_image_copied_into_the_data_is_a_leak(images):
    records, x = images
    rows = list(range(CLEAN)) + [CLEAN]  # image 0's exact copy, as a reference image
    roles = ["labeled"] * CLEAN + ["reference"]
    found = find_hygiene(x[rows], lambda r: thumbnail(records[rows[r]].path))
    assert find_leaks(found, roles) == [{"reference": CLEAN, "copies": [0], "roles": ["labeled"]}]
    assert find_leaks(find_hygiene(x[:CLEAN]), roles[:CLEAN]) == []


def test_one_image_identical_images_and_none_get_answers(images):
    records, x = images
    one = find_hygiene(x[:1])
    assert one.groups == [] and one.outliers == []
    same = find_hygiene(x[[0] * 5])
    assert same.groups == [[0, 1, 2, 3, 4]] and same.outliers == []  # one group; nothing stands out
    none = find_hygiene(torch.zeros(0, x.shape[1]))
    assert none.groups == [] and none.outliers == []


def test_the_served_order_puts_duplicates_then_outliers_last():
    # rows 0, 1 labeled; 2..9 pool (positions 0..7); groups: a labeled task's copy (row 4), two pool copies
    roles = ["labeled", "labeled"] + ["pool"] * 8
    found = Hygiene(groups=[[0, 4], [5, 8]], outliers=[3], distance=np.zeros(10), threshold=1.0, k=2)
    pool_rows = list(range(2, 10))
    order = [6, 1, 3, 2, 0, 7, 5, 4]  # positions, best first: rows 8, 3, 5, 4, 2, 9, 7, 6
    served, moved = hygienic_order(order, pool_rows, found, roles)
    # row 8 outranks its copy 5 and stays; row 4 copies a labeled task; row 3 is an outlier
    assert moved == {3: "near-duplicate of a pool task", 2: "near-duplicate of a labeled task", 1: "outlier"}
    assert served == [6, 0, 7, 5, 4] + [3, 2] + [1]
    assert sorted(served) == list(range(8))


def test_isal_hygiene_writes_groups_leaks_and_outliers(images, tmp_path, capsys):
    records, _ = images
    data, reference = tmp_path / "data", tmp_path / "reference"
    data.mkdir()
    reference.mkdir()
    for r in records[:CLEAN] + records[CLEAN + 1:]:  # image 0's copy goes to the reference set
        Image.open(r.path).save(data / r.id)
    Image.open(records[CLEAN].path).save(reference / "copy-of-000.png")
    out = tmp_path / "out"
    assert main(["hygiene", "--data", str(data), "--reference", str(reference), "--out", str(out),
                 "--device", "cpu", "--embedding-cache", str(tmp_path / "cache")]) == 0
    read = lambda name: list(csv.DictReader(open(out / name)))  # noqa: E731
    groups: dict[str, set[str]] = {}
    for row in read("duplicates.csv"):
        groups.setdefault(row["group"], set()).add(row["path"].rsplit("/", 1)[-1])
    names = sorted(map(sorted, groups.values()))
    assert names == [["000.png", "copy-of-000.png"], ["001.png", "061.png"], ["002.png", "062.png"],
                     ["003.png", "063.png"]]
    (leak,) = read("leaks.csv")
    assert leak["reference"].endswith("copy-of-000.png") and leak["copy"].endswith("000.png")
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in read("outliers.csv")) == ["064.png", "065.png", "066.png"]
    assert "4 near-duplicate groups, 1 leaked copies, 3 outliers" in capsys.readouterr().out


def test_isal_hygiene_on_an_empty_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["hygiene", "--data", str(tmp_path / "empty"), "--device", "cpu"]) == 2
    assert "isal: error:" in capsys.readouterr().err
