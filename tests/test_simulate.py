"""`isal simulate`: results, resume, savings arithmetic, bad input (tiny PNG folders, CPU)."""
import csv
import json
import re

import pytest
import torch
from PIL import Image

from backend.tools.cli import main as isal
from isal_core.cli import main
from isal_core.data import cifar10
from isal_core.data.images import DataError, ImageDecodeError
from isal_core.simulation.report import (
    cost_to_reach,
    interval95,
    label_balance,
    mean_curves,
    metric_table,
    savings,
    savings_table,
)
from isal_core.simulation.run import SIM_STRATEGIES, Simulation, SimulationConfig, load_config, simulate
from isal_core.simulation.rundir import RESULT_COLUMNS, ConfigMismatch

COLORS = {"blue": (40, 40, 200), "green": (40, 200, 40), "red": (200, 40, 40)}


def make_dataset(root, train=16, test=8, classes=COLORS):
    """train/<class>/*.png and test/<class>/*.png: noisy colour squares, one colour per class."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train), ("test", test)):
        for name, rgb in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = (torch.randn(16, 16, 3, generator=g) * 60).clamp(-100, 100)
                pixels = (torch.tensor(rgb).float() + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{name}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def config(data, out, **kw):
    base = dict(data=str(data), out=str(out), strategies=["random", "isal"], initial=6, step=6, rounds=2, seeds=[0],
                epochs=1, min_steps=0, batch_size=8, arch="small_cnn", weights=None, image_size=16, reference_size=6,
                hessian_samples=16, progress=False)
    return SimulationConfig(**{**base, **kw})


def read_rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def read_lines(out):
    return (out / "results.csv").read_text().splitlines()


def selections(out, strategy, seed=0):
    return [r["added"] for r in json.loads((out / "state" / f"{strategy}-{seed}.json").read_text())["rounds"]]


# ---------------------------------------------------------------------------
# results


def test_every_strategy_writes_one_row_per_round(dataset, tmp_path):
    out = simulate(config(dataset, tmp_path / "run", strategies=list(SIM_STRATEGIES), seeds=[0, 1]))
    with open(out / "results.csv", newline="") as f:
        assert tuple(csv.reader(f).__next__()) == RESULT_COLUMNS
    rows = read_rows(out)
    assert len(rows) == len(SIM_STRATEGIES) * 2 * 2
    assert {(r["strategy"], r["seed"], r["round"]) for r in rows} == {
        (s, str(seed), str(r)) for s in SIM_STRATEGIES for seed in (0, 1) for r in (1, 2)}
    for row in rows:
        assert row["labels"] == str(6 * int(row["round"]))
        assert row["boxes"] == ""
        assert 0.0 <= float(row["metric"]) <= 1.0 and float(row["seconds"]) >= 0
    for seed in ("0", "1"):  # one initial set and one round-1 model per seed, shared by all strategies
        assert len({(r["metric"], r["seconds"]) for r in rows if r["seed"] == seed and r["round"] == "1"}) == 1
        assert len({json.dumps(selections(out, s, int(seed))[0]) for s in SIM_STRATEGIES}) == 1
    for strategy in SIM_STRATEGIES:  # each round adds `step` new images
        first, second = selections(out, strategy)
        assert len(second) == 6 and not set(first) & set(second)
    assert (out / "curves.png").stat().st_size > 1000
    assert "| random |" in (out / "savings.md").read_text()


def test_reference_set_is_disjoint_from_the_evaluation_set(dataset):
    sim = Simulation(config(dataset, "unused", reference_size=5, test_subset=10))
    assert len(sim.data.reference) == 5 and len(sim.data.evaluation) == 10
    assert not set(sim.data.reference) & set(sim.data.evaluation)


def test_same_seed_gives_identical_selections_and_metrics(dataset, tmp_path):
    kw = dict(strategies=["isal", "coreset", "entropy"], rounds=3)
    a = simulate(config(dataset, tmp_path / "a", **kw))
    b = simulate(config(dataset, tmp_path / "b", **kw))
    for strategy in kw["strategies"]:
        assert selections(a, strategy) == selections(b, strategy)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_rows(a)) == strip(read_rows(b))


# ---------------------------------------------------------------------------
# resume


class CountTraining:
    def __init__(self, monkeypatch):
        self.calls = []
        original = Simulation.train

        def train(sim, labeled, seed):
            self.calls.append((seed, len(labeled)))
            return original(sim, labeled, seed)

        monkeypatch.setattr(Simulation, "train", train)


def test_model_and_ranking_depend_on_the_labeled_set_not_its_order(dataset, tmp_path):
    """What the Label Studio run relies on: the backend sees labeled tasks in id order."""
    sim = Simulation(config(dataset, tmp_path / "unused"))
    labeled = sim.initial(0) + sim.pool(0, sim.initial(0))[:4]
    shuffled = labeled[::-1]
    a, b = sim.train(labeled, 0), sim.train(shuffled, 0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert sim.rank("isal", a, labeled, 0) == sim.rank("isal", b, shuffled, 0)


def test_raising_rounds_computes_only_the_new_round(dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    simulate(config(dataset, out, rounds=2, seeds=[0, 1]))
    before = read_lines(out)
    counter = CountTraining(monkeypatch)
    simulate(config(dataset, out, rounds=3, seeds=[0, 1]))
    # one training per (strategy, seed), all of round 3; round 2's models come from checkpoints
    assert sorted(counter.calls) == sorted([(0, 18), (1, 18)] * 2)
    after = read_lines(out)
    assert after[:len(before)] == before and len(after) == len(before) + 4
    assert sorted(r["round"] for r in read_rows(out)).count("3") == 4
    counter.calls.clear()
    simulate(config(dataset, out, rounds=3, seeds=[0, 1]))  # nothing left to do
    assert counter.calls == [] and read_lines(out) == after
    straight = simulate(config(dataset, tmp_path / "straight", rounds=3, seeds=[0, 1]))
    assert selections(out, "isal", 1) == selections(straight, "isal", 1)  # ranked by the reloaded model


def test_cluster_serving_by_prediction_resumes_to_the_same_picks(dataset, tmp_path):
    """Without frozen features the served cluster is the predicted class, and a labeled task counts in its
    label's: a resumed run picks what an uninterrupted one does."""
    kw = dict(strategies=["random", "isal"], cluster_serving="on", step=4, epochs=2)
    straight = simulate(config(dataset, tmp_path / "straight", rounds=4, **kw))
    out = tmp_path / "run"
    simulate(config(dataset, out, rounds=2, **kw))
    simulate(config(dataset, out, rounds=4, **kw))
    for strategy in kw["strategies"]:
        assert selections(out, strategy) == selections(straight, strategy)


def test_interrupted_run_resumes_where_it_stopped(dataset, tmp_path):
    """A corrupt image that only round 2 reads stops the run; once fixed, the rerun
    finishes with exactly the rows and selections of an uninterrupted run."""
    kw = dict(strategies=["random"], rounds=3)
    reference = simulate(config(dataset, tmp_path / "reference", **kw))
    victim = Simulation(config(dataset, "unused")).data.train[selections(reference, "random")[1][0]].path
    good = open(victim, "rb").read()
    out = tmp_path / "run"
    try:
        open(victim, "wb").write(b"not a png")
        with pytest.raises(ImageDecodeError, match=victim.split("/")[-1]):
            simulate(config(dataset, out, **kw))
        assert [r["round"] for r in read_rows(out)] == ["1"]
    finally:
        open(victim, "wb").write(good)
    simulate(config(dataset, out, **kw))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_rows(out)) == strip(read_rows(reference))
    assert selections(out, "random") == selections(reference, "random")


def test_lost_results_row_is_restored_from_the_state(dataset, tmp_path):
    out = simulate(config(dataset, tmp_path / "run", strategies=["random"]))
    lines = read_lines(out)
    (out / "results.csv").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:5])  # crash mid-append
    simulate(config(dataset, out, strategies=["random"]))
    assert read_lines(out) == lines


def test_another_config_in_the_same_directory_is_refused(dataset, tmp_path):
    out = simulate(config(dataset, tmp_path / "run", strategies=["random"]))
    with pytest.raises(ConfigMismatch, match="epochs: 1 there, 2 now"):
        simulate(config(dataset, out, strategies=["random"], epochs=2))
    simulate(config(dataset, out, strategies=["random", "margin"], seeds=[0, 3]))  # more runs: allowed
    assert len(read_rows(out)) == 2 * 2 * 2


# ---------------------------------------------------------------------------
# savings arithmetic on hand-made curves


def rows_of(curves):
    """{strategy: {seed: [(labels, metric), ...]}} -> results rows."""
    return [{"strategy": s, "seed": str(seed), "round": str(i + 1), "labels": str(x), "boxes": "", "metric": str(m),
             "seconds": "1"}
            for s, seeds in curves.items() for seed, points in seeds.items() for i, (x, m) in enumerate(points)]


KNOWN = rows_of({
    # final mean 0.8 at 1000 labels
    "random": {0: [(200, 0.4), (600, 0.6), (1000, 0.8)]},
    # mean over two seeds: 0.4, 0.7, 0.9 -> reaches 0.8 halfway between 600 and 1000 = 800
    "isal": {0: [(200, 0.4), (600, 0.65), (1000, 0.85)], 1: [(200, 0.4), (600, 0.75), (1000, 0.95)]},
    # never reaches 0.8; its own final 0.7 at 1000 is reached by isal at 600 and random at 800
    "entropy": {0: [(200, 0.4), (600, 0.5), (1000, 0.7)]},
})


def test_savings_from_known_curves():
    found = {(s.baseline, s.strategy): (s.cost, s.percent) for s in savings(KNOWN)}
    assert found[("random", "isal")] == pytest.approx((800, 20.0))
    assert found[("random", "entropy")] == (None, None)
    assert found[("entropy", "isal")] == pytest.approx((600, 40.0))  # exactly on a point
    assert found[("entropy", "random")] == pytest.approx((800, 20.0))
    assert found[("isal", "random")] == (None, None)
    assert len(found) == 6
    table = savings_table(KNOWN)
    assert "| random | 1000 | 0.8000 | isal | 800 | 20.0% |" in table
    assert "| random | 1000 | 0.8000 | entropy | not reached | not reached |" in table
    assert "| entropy | 1000 | 0.7000 | isal | 600 | 40.0% |" in table


def test_mean_curve_and_edge_cases():
    curve = mean_curves(KNOWN)["isal"]
    assert [(p.cost, round(p.mean, 6), p.low, p.high, p.seeds) for p in curve][1] == (600, 0.7, 0.65, 0.75, 2)
    assert cost_to_reach(curve, 0.3) == 200  # already reached at the first point
    assert cost_to_reach(curve, 0.95) is None
    negative = savings(rows_of({"a": {0: [(100, 0.5), (200, 0.9)]}, "b": {0: [(100, 0.5), (150, 0.6), (300, 0.9)]}}))
    b_vs_a = next(s for s in negative if s.baseline == "a")
    assert b_vs_a.cost == pytest.approx(300) and b_vs_a.percent == pytest.approx(-50.0)  # needs more labels


def test_savings_md_matches_results_csv(dataset, tmp_path):
    out = simulate(config(dataset, tmp_path / "run", seeds=[0, 1]))
    assert (out / "savings.md").read_text() == savings_table(read_rows(out))
    metrics = (out / "metrics.md").read_text()
    sim = Simulation(config(dataset, "unused"))
    for strategy in ("random", "isal"):  # each seed's one selection round of 6 picks, 3 classes
        picks = [[sim.data.train[i].label for i in selections(out, strategy, seed)[1]] for seed in (0, 1)]
        assert f"{label_balance(picks, 3):.3f} |" in next(line for line in metrics.splitlines()
                                                          if line.startswith(f"| {strategy} |"))


def test_confidence_interval_and_label_balance_against_hand_computed_values():
    assert interval95([1.0, 2.0, 3.0]) == pytest.approx(4.303 / 3 ** 0.5)  # sd 1, t(2 df) 4.303
    assert interval95([0.5]) == 0.0 and interval95([2.0, 2.0]) == 0.0
    assert label_balance([[0, 1], [0, 0]], 2) == pytest.approx(0.5)  # entropy log 2, then 0
    assert label_balance([[0, 1, 2, 3]], 4) == pytest.approx(1.0)
    table = metric_table(rows_of({"a": {0: [(10, 0.5), (20, 0.6)], 1: [(10, 0.7), (20, 0.8)]},
                                  "b": {0: [(10, 0.5)]}}), balance={"a": 0.25})
    assert "| a | 60.0 ± 127.1 | 70.0 ± 127.1 | 0.250 |" in table  # sd 14.14, t(1 df) 12.706, / sqrt 2
    assert "| b | 50.0 ± 0.0 (1) |  | |" in table


# ---------------------------------------------------------------------------
# bad input


def test_single_class_dataset_is_refused(tmp_path):
    data = make_dataset(tmp_path / "one", classes={"red": (200, 40, 40)})
    with pytest.raises(DataError, match="single class"):
        simulate(config(data, tmp_path / "run"))


@pytest.mark.parametrize("missing", ["train", "test"])
def test_empty_split_is_named(dataset, tmp_path, missing):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    shutil.rmtree(data / missing)
    (data / missing).mkdir()
    with pytest.raises(DataError, match=re.escape(f"{data}/{missing}")):
        simulate(config(data, tmp_path / "run"))


def test_step_larger_than_pool_is_refused_before_training(dataset, tmp_path, monkeypatch):
    counter = CountTraining(monkeypatch)
    with pytest.raises(DataError, match="step 50 is larger than the unlabeled pool"):
        simulate(config(dataset, tmp_path / "run", step=50))
    with pytest.raises(DataError, match="4 rounds need 42 labels"):
        simulate(config(dataset, tmp_path / "run", initial=12, step=10, rounds=4, pool_subset=40))
    with pytest.raises(DataError, match="too few for a reference set"):
        simulate(config(dataset, tmp_path / "run", reference_size=24))
    assert counter.calls == [] and not (tmp_path / "run").exists()


def test_corrupt_test_image_is_named(dataset, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    (data / "test" / "red" / "red_03.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageDecodeError, match="red_03.png"):
        simulate(config(data, tmp_path / "run"))


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="strategies must be distinct names"):
        SimulationConfig(strategies=["isal", "bald"])
    with pytest.raises(ValueError, match="need a reference set"):
        SimulationConfig(strategies=["gradsim"], reference_size=0)
    with pytest.raises(ValueError, match="Extra inputs"):
        SimulationConfig(epoch=3)


# ---------------------------------------------------------------------------
# command line and protocol files


def test_cli_runs_and_reports_errors(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"initial": 6, "step": 6, "rounds": 2, "seeds": [0], "epochs": 1, "min_steps": 0,
                               "batch_size": 8, "weights": None,
                               "image_size": 16, "reference_size": 6, "hessian_samples": 16}))
    out = tmp_path / "run"
    args = ["simulate", "--config", str(cfg), "--data", str(dataset), "--strategies", "random,gradsim",
            "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert {r["strategy"] for r in read_rows(out)} == {"random", "gradsim"}
    assert json.loads((out / "config.json").read_text())["identity"]["epochs"] == 1
    assert main(args + ["--step", "500"]) == 2
    assert "step 500 is larger than the unlabeled pool" in capsys.readouterr().err
    # the engine's own command has no Label Studio: that is the backend's extension of it
    with pytest.raises(SystemExit):
        main(args + ["--label-studio", "local"])
    capsys.readouterr()
    # the installed `isal` (backend.tools.cli) adds it (every strategy plays through the backend); a run
    # directory made offline is not resumed through Label Studio, and a URL needs its key
    assert isal(args + ["--label-studio", "local"]) == 2
    assert "different config (driver: None there, 'label-studio' now)" in capsys.readouterr().err
    assert isal([*args[:6], "isal", *args[7:], "--label-studio", "http://127.0.0.1:9"]) == 2
    assert "needs --api-key" in capsys.readouterr().err
    # a misspelled key in a protocol file, or an option of another solver, is named, not ignored
    cfg.write_text(json.dumps({"epoch": 1}))
    assert main(args) == 2
    assert "epoch: unknown key (misspelled?)" in capsys.readouterr().err
    cfg.write_text(json.dumps({"solver": "cg", "lissa_scale": 1e5}))
    assert main(args) == 2
    assert "lissa_scale do(es) not apply to solver 'cg'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["cifar10-cpu", "cifar10-cpu-2026-11", "cifar10-paper", "cifar10-pretrained-cpu",
                                  "bccd-cpu", "bccd-lite0", "cifar10-lite0-defaults", "cifar10-lite0-baselines",
                                  "cifar10-lite0-validation", "tagging", "tagging-mid", "tagging-validation"])
def test_protocol_files_load(name):
    from pathlib import Path

    path = Path(cifar10.REPO) / "configs" / f"{name}.json"
    cfg = load_config(str(path), epochs=3)
    assert cfg.epochs == 3 and cfg.out == f"runs/{name}"
    assert cfg.labels_at(cfg.rounds) <= (cfg.pool_subset or 50000)


def test_cifar10_download_fallback_writes_class_folders(tmp_path, monkeypatch):
    class FakeCIFAR10:
        classes = ["cat", "dog"]

        def __init__(self, root, train, download):
            self.items = [(Image.new("RGB", (32, 32), (i, 0, 0)), i % 2) for i in range(4 if train else 2)]

        def __iter__(self):
            return iter(self.items)

        def __len__(self):
            return len(self.items)

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    folder = cifar10.download_cifar10(tmp_path)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == [
        "test/cat/00000.png", "test/dog/00001.png", "train/cat/00000.png", "train/cat/00002.png",
        "train/dog/00001.png", "train/dog/00003.png"]
    assert cifar10.download_cifar10(tmp_path) == folder  # done once


def test_validation_size_holds_train_images_out_as_the_test_split(dataset, tmp_path):
    from isal_core.simulation.dataset import SimulationData

    plain = SimulationData.load(config(dataset, tmp_path / "a"))
    held = SimulationData.load(config(dataset, tmp_path / "b", validation_size=12))
    again = SimulationData.load(config(dataset, tmp_path / "c", validation_size=12, seeds=[3]))
    train_ids, test_ids = {r.id for r in held.train}, {r.id for r in held.test}
    assert len(test_ids) == 12 and not train_ids & test_ids  # never in the pool
    assert train_ids | test_ids == {r.id for r in plain.train}  # the test split's images are not read
    assert [r.id for r in again.test] == [r.id for r in held.test] and again.reference == held.reference
    assert {r.id: r.label for r in held.test} == {r.id: r.label for r in plain.train if r.id in test_ids}
    with pytest.raises(DataError, match="validation_size 48"):
        SimulationData.load(config(dataset, tmp_path / "d", validation_size=48))


def test_budgets_give_each_round_its_labeled_count(dataset, tmp_path):
    out = tmp_path / "budgets"
    cfg = config(dataset, out, strategies=["random"], budgets=[4, 6, 10], rounds=3, initial=1, step=1)
    assert (cfg.initial, cfg.rounds, cfg.labels_at(3)) == (4, 3, 10)
    assert [cfg.step_at(r) for r in (1, 2)] == [2, 4]
    simulate(cfg)
    assert [int(r["labels"]) for r in read_rows(out)] == [4, 6, 10]
    assert config(dataset, out, budgets=[4, 6, 10], rounds=2).rounds == 2  # fewer rounds: resumable
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must increase"):
        config(dataset, out, budgets=[4, 4])
    with pytest.raises(ValidationError, match="more than the 2 budgets"):
        config(dataset, out, budgets=[4, 6], rounds=3)
