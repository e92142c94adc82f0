"""`isal simulate --label-studio`: the offline protocol played through a real Label Studio and
the backend under gunicorn selects the same images in the same order, and resumes."""
from __future__ import annotations

import json

import pytest

from backend.labelstudio.client import LabelStudioAPI
from backend.tools.simulate_label_studio import SimulationError, check_strategies, simulate_label_studio
from isal_core.simulation.run import SimulationConfig, simulate

try:
    from test_simulate import make_dataset, read_rows, selections
except ImportError:  # tests/ imported as a package
    from tests.test_simulate import make_dataset, read_rows, selections

pytestmark = pytest.mark.integration

STRATEGIES = ["isal", "isal_l1"]
CLOSE_COLORS = {"grey": (110, 110, 110), "reddish": (130, 105, 105), "greenish": (105, 130, 105)}


def tiny(data, out, **kw) -> SimulationConfig:
    """CPU, fixed seeds, deterministic training: 6 initial labels + 4 per round, 3 models."""
    base = dict(data=str(data), out=str(out), strategies=STRATEGIES, initial=6, step=4, rounds=3, seeds=[0],
                epochs=2, min_steps=0, batch_size=8, arch="small_cnn", weights=None, image_size=16, reference_size=6,
                hessian_samples=64, progress=False)
    return SimulationConfig(**{**base, **kw})


class Interrupt(Exception):
    pass


def test_label_studio_run_selects_what_the_offline_run_selects(label_studio, tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data")
    offline = simulate(tiny(data, tmp_path / "offline"))

    # Through Label Studio, first two rounds only, then a third that is interrupted after
    # two of its four annotations: the rerun must read those back and go on.
    run = tmp_path / "ls"
    args = (label_studio.url, label_studio.legacy_token, str(label_studio.files_root))
    simulate_label_studio(tiny(data, run, rounds=2), *args)
    assert [len(a) for a in selections(run, "isal")] == [6, 4]

    calls = {"n": 0}
    original = LabelStudioAPI.create_annotation

    def flaky(self, task_id, result):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupt("killed mid-round")
        return original(self, task_id, result)

    monkeypatch.setattr(LabelStudioAPI, "create_annotation", flaky)
    with pytest.raises(Interrupt):
        simulate_label_studio(tiny(data, run), *args)
    monkeypatch.setattr(LabelStudioAPI, "create_annotation", original)
    simulate_label_studio(tiny(data, run), *args)

    for strategy in STRATEGIES:
        expected, got = selections(offline, strategy), selections(run, strategy)
        assert [len(a) for a in got] == [6, 4, 4] and len({i for a in got for i in a}) == 14
        assert got == expected, strategy  # same images, same order, every round
    metric = {(r["strategy"], r["round"]): float(r["metric"]) for r in read_rows(offline)}
    for r in read_rows(run):  # the backend's published models score what the offline models score
        assert float(r["metric"]) == pytest.approx(metric[(r["strategy"], r["round"])], abs=1e-6)
    assert len(read_rows(run)) == 6 and (run / "savings.md").exists() and (run / "curves.png").exists()

    # Label Studio holds the annotations: initial + both rounds, plus R for isal only.
    link = json.loads((run / "state" / "isal-0.label-studio.json").read_text())
    tasks = list(label_studio.client().tasks.list(project=link["project"], fields="all", page_size=500))
    annotated = [t for t in tasks if t.annotations]
    assert len(annotated) == 14 + 6 and all(len(t.annotations) == 1 for t in annotated)


def test_label_studio_run_refuses_what_it_cannot_do(label_studio, tmp_path):
    data = make_dataset(tmp_path / "data", train=4, test=4)
    small = dict(strategies=["isal"], initial=2, step=2, reference_size=2)
    check_strategies(tiny(data, tmp_path / "a", strategies=["isal", "random", "badge"]))  # the backend has them
    with pytest.raises(ValueError, match="run isal_labeled offline"):  # R = the current labeled set: offline only
        check_strategies(tiny(data, tmp_path / "a", strategies=["isal", "isal_labeled"]))
    with pytest.raises(ValueError, match="task: tagging runs offline"):
        check_strategies(tiny(data, tmp_path / "a", task="tagging", weights="auto", arch="efficientnet_lite0"))
    with pytest.raises(ValueError, match="--api-key"):
        simulate_label_studio(tiny(data, tmp_path / "b", **small), "http://127.0.0.1:9", None, None)
    # a run directory whose project the server does not have cannot resume there
    out = tmp_path / "c"
    (out / "state").mkdir(parents=True)
    (out / "state" / "isal-0.label-studio.json").write_text(json.dumps({"url": "elsewhere", "project": 999999}))
    with pytest.raises(SimulationError, match="does not have"):
        simulate_label_studio(tiny(data, out, **small),
                              label_studio.url, label_studio.legacy_token, str(label_studio.files_root))


def test_frozen_features_and_cluster_serving_select_alike_offline_and_through_label_studio(label_studio, tmp_path):
    """The default's frozen Lite0 features + cluster serving: Label Studio's own serving rule, played for real,
    picks what the offline emulation of it picks."""
    data = make_dataset(tmp_path / "data")
    frozen = dict(strategies=["isal"], arch="efficientnet_lite0", weights="DEFAULT", min_steps=100, epochs=20)
    offline = simulate(tiny(data, tmp_path / "offline", embedding_cache=str(tmp_path / "emb"), **frozen))
    run = tmp_path / "ls"
    simulate_label_studio(tiny(data, run, **frozen), label_studio.url, label_studio.legacy_token,
                          str(label_studio.files_root))
    expected, got = selections(offline, "isal"), selections(run, "isal")
    assert [len(a) for a in got] == [6, 4, 4] and got == expected
    config = json.loads((offline / "config.json").read_text())["identity"]
    assert config["weights"] == "DEFAULT" and config["mode"] == "auto" and config["cluster_serving"] == "auto"
    plain = simulate(tiny(data, tmp_path / "plain", embedding_cache=str(tmp_path / "emb"), cluster_serving="off",
                          **frozen))
    assert selections(plain, "isal") != expected  # the clusters changed what was served


def test_the_cold_start_through_label_studio_serves_the_offline_typiclust_initial_set(label_studio, tmp_path):
    """`initial_strategy: typiclust`: no task is annotated at import; "Start training" with no label runs the
    backend's cold start, and Label Studio serves the offline rule's initial set, in its order (the driver
    checks each served task), then every round selects what the offline run selects. The batch changes from
    round to round (budgets), so the driver restarts the backend with each round's ISAL_BATCH."""
    data = make_dataset(tmp_path / "data")
    cold = dict(strategies=["isal_batch"], arch="efficientnet_lite0", weights="DEFAULT", min_steps=100, epochs=20,
                initial_strategy="typiclust", budgets=[6, 9, 14], rounds=3)
    offline = simulate(tiny(data, tmp_path / "offline", **cold))
    run = tmp_path / "ls"
    simulate_label_studio(tiny(data, run, **cold), label_studio.url, label_studio.legacy_token,
                          str(label_studio.files_root))
    expected, got = selections(offline, "isal_batch"), selections(run, "isal_batch")
    assert [len(a) for a in got] == [6, 3, 5] and got == expected
    kinds = [json.loads(m.read_text())["kind"] for m in sorted((run / "backend").glob("*/*/*/meta.json"))]
    assert kinds == ["cold_start", "round", "round", "round"], kinds  # the cold start (at connection), 3 models
    backbones = [json.loads((d / "config.json").read_text())["last_run"].get("backbone") for d in (offline, run)]
    assert backbones[0] and backbones[0] == backbones[1]  # both name the weights file that made their numbers
    random_start = simulate(tiny(data, tmp_path / "random", **{**cold, "initial_strategy": "random"}))
    assert selections(random_start, "isal_batch")[0] != expected[0]  # the cold start chose another initial set


def test_cluster_serving_by_predicted_class_selects_alike_offline_and_through_label_studio(label_studio, tmp_path):
    """From scratch (no weights) the clusters are the predicted classes, which change between versions,
    and a labeled task counts in its label's cluster. The backend writes the served order into the
    scores: offline and through Label Studio, the same picks in four rounds; colours close together, so
    the predicted classes do change between versions."""
    data = make_dataset(tmp_path / "data", classes=CLOSE_COLORS)
    scratch = dict(strategies=["isal"], cluster_serving="on", rounds=4, step=6, epochs=3, damping=1.0)
    offline = simulate(tiny(data, tmp_path / "offline", **scratch))
    run = tmp_path / "ls"
    simulate_label_studio(tiny(data, run, **scratch), label_studio.url, label_studio.legacy_token,
                          str(label_studio.files_root))
    expected = selections(offline, "isal")
    assert [len(a) for a in expected] == [6, 6, 6, 6] and selections(run, "isal") == expected
    plain = simulate(tiny(data, tmp_path / "plain", **{**scratch, "cluster_serving": "off"}))
    assert selections(plain, "isal") != expected  # the clusters changed what was served
