"""`isal select` end to end on tiny image folders."""
import csv
import subprocess
import sys

import pytest
from PIL import Image

from isal_core.cli import main

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def make_images(root, per_class, labeled=True, offset=0):
    for c, rgb in COLORS.items():
        folder = root / c if labeled else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shade = tuple(max(0, min(255, v + 7 * i - 20)) for v in rgb)
            Image.new("RGB", (20, 20), shade).save(folder / f"{c}_{offset + i}.png")
    return root


@pytest.fixture
def folders(tmp_path):
    return {
        "labeled": make_images(tmp_path / "labeled", 6),
        "reference": make_images(tmp_path / "reference", 3, offset=50),
        "pool": make_images(tmp_path / "pool", 7, labeled=False, offset=100),
    }


def run(folders, tmp_path, *extra):
    out = tmp_path / "ranked.csv"
    code = main(["select", "--labeled", str(folders["labeled"]), "--reference", str(folders["reference"]),
                 "--pool", str(folders["pool"]), "--epochs", "2", "--min-steps", "0", "--batch-size", "8", "--quiet",
                 "--weights", "none", "--out", str(out), *extra])
    return code, out


def read(out):
    with open(out) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("strategy", ["isal", "random", "coreset"])
def test_select_writes_the_whole_pool_ranked(folders, tmp_path, strategy):
    code, out = run(folders, tmp_path, "--budget", "3", "--strategy", strategy)
    assert code == 0
    rows = read(out)
    assert len(rows) == 14 and len({r["id"] for r in rows}) == 14
    assert [int(r["rank"]) for r in rows] == list(range(1, 15))
    assert [int(r["selected"]) for r in rows] == [1] * 3 + [0] * 11
    if strategy == "isal":
        values = [float(r["influence"]) for r in rows]
        assert values == sorted(values)


def test_checkpoint_round_trip_gives_the_same_ranking(folders, tmp_path):
    ckpt = tmp_path / "model.pt"
    code, out = run(folders, tmp_path, "--save-checkpoint", str(ckpt))
    assert code == 0 and ckpt.exists()
    first = read(out)
    code, out = run(folders, tmp_path, "--checkpoint", str(ckpt))
    assert code == 0
    assert [r["id"] for r in read(out)] == [r["id"] for r in first]


def test_bad_inputs_are_named(folders, tmp_path, capsys):
    (folders["pool"] / "broken.jpg").write_bytes(b"not a jpeg at all")
    code, _ = run(folders, tmp_path)
    assert code == 2 and "broken.jpg" in capsys.readouterr().err
    (folders["pool"] / "broken.jpg").unlink()

    code, _ = run(folders, tmp_path, "--budget", "15")
    assert code == 2 and "larger than the pool" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["select", "--labeled", str(folders["labeled"]), "--pool", str(empty), "--quiet",
                 "--out", str(tmp_path / "x.csv")])
    assert code == 2 and str(empty) in capsys.readouterr().err


def test_console_entry_point_runs(folders, tmp_path):
    result = subprocess.run([sys.executable, "-m", "isal_core.cli", "select", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--reference" in result.stdout


def test_training_from_scratch_is_reproducible(folders, tmp_path):
    _, out = run(folders, tmp_path, "--strategy", "isal")
    first = [(r["id"], r["influence"]) for r in read(out)]
    _, out = run(folders, tmp_path, "--strategy", "isal")
    assert [(r["id"], r["influence"]) for r in read(out)] == first


def test_review_lists_the_mislabeled_image_first(tmp_path):
    """`isal review`: a blue image filed under red is the most suspicious of twenty-one, by loss alone (no
    reference set) and by influence on a clean reference set combined with loss."""
    data = make_images(tmp_path / "data", 10)
    Image.new("RGB", (20, 20), COLORS["blue"]).save(data / "red" / "mislabeled.png")
    clean = make_images(tmp_path / "clean", 4, offset=10)
    args = ["review", "--data", str(data), "--weights", "none", "--epochs", "5", "--min-steps", "200",
            "--batch-size", "8", "--damping", "0.1", "--quiet"]
    for extra, signal in (([], "loss"), (["--reference", str(clean)], "combined")):
        out = tmp_path / f"review-{signal}.csv"
        assert main(args + extra + ["--out", str(out)]) == 0
        rows = read(out)
        assert len(rows) == 21 and [r["rank"] for r in rows] == [str(i) for i in range(1, 22)] and signal in rows[0]
        assert rows[0]["path"].endswith("mislabeled.png") and rows[0]["label"] == "red"
        assert rows[0]["model_label"] == "blue" and float(rows[0]["loss"]) == max(float(r["loss"]) for r in rows)
        if extra:  # training on it raised the clean set's loss most
            assert float(rows[0]["influence"]) == max(float(r["influence"]) for r in rows) > 0
