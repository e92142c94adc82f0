"""The tagging protocol of `isal simulate`: tag lists, mosaics, and a run on the default frozen features."""
import csv
import json

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from isal_core.data.images import open_image
from isal_core.data.tags import read_tags, write_mosaics
from isal_core.errors import DataError
from isal_core.simulation.run import SimulationConfig, simulate
from isal_core.tasks.multilabel import AUTO_STRATEGY

COLORS = {"blue": (40, 40, 200), "green": (40, 200, 40), "red": (200, 40, 40)}


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """A CIFAR-10 style root of flat colour squares (32 px), one colour per class: 16 train, 8 test each."""
    root = tmp_path_factory.mktemp("squares")
    for split, n in (("train", 16), ("test", 8)):
        for name, rgb in COLORS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (32, 32), tuple(c + i for c in rgb)).save(root / split / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def mosaics(squares, tmp_path_factory):
    out = tmp_path_factory.mktemp("mosaics")
    write_mosaics(str(squares), out, {"train": 12, "test": 6})
    return out


def quadrant_colours(path) -> set[str]:
    """The classes a mosaic shows, read from its pixels: each quadrant's nearest class colour."""
    pixels = np.asarray(open_image(str(path)).convert("RGB"), dtype=float)
    found = set()
    for y in (0, 32):
        for x in (0, 32):
            mean = pixels[y:y + 32, x:x + 32].reshape(-1, 3).mean(0)
            found.add(min(COLORS, key=lambda c: np.abs(mean - COLORS[c]).sum()))
    return found


def test_mosaics_are_tagged_with_the_classes_they_show_and_no_picture_twice(squares, mosaics):
    classes, train = read_tags(str(mosaics / "train.csv"))
    _, test = read_tags(str(mosaics / "test.csv"), classes)
    assert classes == sorted(COLORS) and (len(train), len(test)) == (12, 6)  # 12 x 4 = every train square once
    for r in train + test:
        assert {classes[t] for t in r.label} == quadrant_colours(r.path)
    pictures = [np.asarray(open_image(r.path))[y:y + 32, x:x + 32].tobytes() for r in train
                for y in (0, 32) for x in (0, 32)]
    assert len(set(pictures)) == 48  # the squares differ by shade: none is used twice
    with pytest.raises(DataError, match="13 mosaics of train need 52 images"):
        write_mosaics(str(squares), mosaics / "more", {"train": 13})


def test_tag_lists_name_what_is_wrong(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("path,tags\na.png,cat;dog\nb.png,\nc.png, dog \n")
    classes, records = read_tags(str(good), ["bird", "cat", "dog"])
    assert [r.label for r in records] == [[1, 2], [], [2]]  # none ticked: a valid answer
    assert records[0].path == str(tmp_path / "a.png")
    assert read_tags(str(good))[0] == ["cat", "dog"]
    for text, error in (("path,tags\na.png,zebra\n", "line 2: unknown tag"), ("path,label\na.png,cat\n", "'tags'"),
                        ("path,tags\n", "no rows"), ("path,tags\n,cat\n", "line 2: empty path")):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(DataError, match=error):
            read_tags(str(bad), ["cat", "dog"])
    with pytest.raises(DataError, match="cannot read"):
        read_tags(str(tmp_path / "absent.csv"))


def test_simulate_tags_with_the_default_features_and_auto_is_the_tagging_default(mosaics, tmp_path):
    out = tmp_path / "run"
    config = SimulationConfig(task="tagging", data=str(mosaics), out=str(out), strategies=["random", "auto",
                              AUTO_STRATEGY, "isal"], initial=4, step=2, rounds=3, seeds=[0], reference_size=2,
                              embedding_cache=str(tmp_path / "embeddings"), progress=False)
    simulate(config)
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and all(0 <= float(r["metric"]) <= 1 for r in rows)
    added = {s: [r["added"] for r in json.loads((out / "state" / f"{s}-0.json").read_text())["rounds"]]
             for s in config.strategies}
    assert added["auto"] == added[AUTO_STRATEGY] and len(added["isal"][1]) == 2
    with pytest.raises(ValidationError, match="tagging learns a head on frozen features"):
        SimulationConfig(task="tagging", weights=None)
