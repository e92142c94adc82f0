"""One settings schema: the same defaults everywhere, flags derived from it, nothing silently dropped."""
from __future__ import annotations

import os

import pytest

from backend.settings import EngineSettings as BackendEngine
from backend.settings import Settings
from isal_core.cli import build_parser
from isal_core.errors import ConfigError
from isal_core.influence.stest import CG, LiSSA, solver_from
from isal_core.settings import EngineSettings, validate
from isal_core.simulation.config import SimulationConfig


def test_the_backend_the_simulation_and_the_cli_share_one_set_of_defaults(monkeypatch):
    for key in [k for k in os.environ if k.startswith("ISAL_")]:
        monkeypatch.delenv(key)
    engine = EngineSettings().model_dump()
    assert {k: v for k, v in BackendEngine().model_dump().items() if k in engine} == engine
    assert {k: v for k, v in SimulationConfig().model_dump().items() if k in engine} == engine
    select = build_parser().commands["select"]
    flags = {a.dest for a in select._actions}
    assert set(engine) <= flags  # every engine setting is a flag of `isal select`
    assert all(select.get_default(k) is None for k in engine)  # the schema's default applies, not the flag's


@pytest.mark.parametrize("values, says", [
    ({"solver": "cg", "lissa_scale": 1e5}, "lissa_scale do(es) not apply to solver 'cg'"),
    ({"solver": "lissa", "cg_iters": 5}, "cg_iters do(es) not apply to solver 'lissa'"),
    ({"solver": "identity", "damping": 10.0}, "damping do(es) not apply to solver 'identity'"),
    ({"epoch": 3}, "epoch: unknown key (misspelled?)"),
    ({"solver": "newton"}, "solver: Input should be 'cg', 'lissa' or 'identity'"),
    ({"arch": "resnet9000"}, "'resnet9000' is not a known model"),
])
def test_an_option_that_does_not_apply_is_named(values, says):
    with pytest.raises(ConfigError) as err:
        validate(EngineSettings, values, "protocol.json")
    assert says in str(err.value) and "protocol.json" in str(err.value)


def test_solver_options_reach_the_solver():
    cg = solver_from(EngineSettings(cg_iters=7, cg_tol=1e-3, damping=2.0))
    assert isinstance(cg, CG) and (cg.max_iter, cg.tol, cg.damping) == (7, 1e-3, 2.0)
    lissa = solver_from(EngineSettings(solver="lissa", lissa_scale=50.0, lissa_depth=3, lissa_repeats=2,
                                       lissa_batch_size=0), seed=5)
    assert isinstance(lissa, LiSSA)
    assert (lissa.scale, lissa.depth, lissa.repeats, lissa.batch_size, lissa.seed) == (50.0, 3, 2, 0, 5)


def test_the_environment_is_checked_by_the_same_schema(monkeypatch):
    monkeypatch.setenv("ISAL_HESSIAN_SAMPLES", "0")  # 0 = every labeled sample, as everywhere
    monkeypatch.setenv("ISAL_MILESTONES", "[0.5, 0.75]")
    s = Settings()
    assert s.engine.hessian_samples == 0 and s.engine.milestones == [0.5, 0.75]
    monkeypatch.setenv("ISAL_LISSA_SCALE", "1e5")
    with pytest.raises(ValueError, match="lissa_scale do.es. not apply to solver 'cg'"):
        Settings()
    monkeypatch.delenv("ISAL_LISSA_SCALE")
    monkeypatch.setenv("ISAL_EPOCS", "3")
    with pytest.raises(ValueError, match="unknown setting.s. ISAL_EPOCS"):
        Settings()


@pytest.mark.parametrize("solver", ["cg", "lissa", "identity"])
def test_a_dump_of_the_settings_validates_again(solver):
    settings = EngineSettings(solver=solver)
    assert EngineSettings(**settings.model_dump()) == settings  # other solvers' options at their defaults
    with pytest.raises(ValueError, match="do.es. not apply"):
        EngineSettings(**{**settings.model_dump(), "lissa_scale" if solver != "lissa" else "cg_iters": 7})


def test_a_frozen_head_gets_exact_influence_and_a_whole_network_the_reference_codes():
    from isal_core.settings import FROZEN_INFLUENCE
    from isal_core.tasks.detection_defaults import detection_settings

    frozen = EngineSettings()
    assert frozen.frozen and (frozen.params, frozen.hessian_samples, frozen.cg_tol, frozen.cg_iters) == \
        ("all", 0, 1e-10, 500) and frozen.damping == FROZEN_INFLUENCE["damping"]
    scratch = EngineSettings(weights="none")
    assert (scratch.params, scratch.hessian_samples, scratch.damping, scratch.cg_tol) == ("weights", 1024, 100.0, 1e-5)
    assert EngineSettings(damping=5.0, params="last").damping == 5.0  # what is given wins, option by option
    assert EngineSettings(damping=5.0, params="last").params == "last"
    lissa = EngineSettings(solver="lissa")  # a CG option never lands on another solver
    assert lissa.cg_tol == 1e-5 and lissa.damping == FROZEN_INFLUENCE["damping"]
    assert EngineSettings(**frozen.model_dump()) == frozen  # a dump validates again, to the same settings
    detection = detection_settings(frozen)  # FPN and head learn: the whole-network defaults, over the head
    assert (detection.params, detection.hessian_samples, detection.damping) == ("head", 1024, 100.0)


def test_a_detector_on_the_frozen_body_gets_the_light_head_and_training_unless_set():
    from isal_core.tasks.detection import detection_adapter
    from isal_core.tasks.detection_defaults import FROZEN_DETECTION, detection_settings

    body = detection_settings(EngineSettings())  # the frozen Lite0 body: FPN and head on cached maps
    assert {k: getattr(body, k) for k in FROZEN_DETECTION} == FROZEN_DETECTION
    adapter = detection_adapter(EngineSettings(), 3)
    assert (adapter.backbone, adapter.head_convs, adapter.fpn_channels) == ("efficientnet_lite0", 1, 64)
    given = EngineSettings(head_convs=2, lr=0.02)  # what is given wins, option by option
    assert (detection_settings(given).lr, detection_settings(given).min_steps) == (0.02, FROZEN_DETECTION["min_steps"])
    assert detection_adapter(given, 3).head_convs == 2
    scratch = detection_settings(EngineSettings(weights="none"))  # a ResNet from scratch keeps the class defaults
    assert (scratch.head_convs, scratch.min_steps, scratch.batch_size) == (4, 500, 64)


def test_the_learner_is_semi_on_frozen_features_and_supervised_where_semi_cannot_apply():
    from isal_core.errors import ConfigError
    from isal_core.tasks.detection_defaults import detection_settings

    assert EngineSettings().learner == "semi" and "learner" not in EngineSettings().model_fields_set
    assert EngineSettings(weights="none").learner == "supervised"  # a whole network from scratch
    assert EngineSettings(mode="finetune").learner == "supervised"
    assert EngineSettings(learner="supervised").learner == "supervised"
    with pytest.raises(ValueError, match="learner semi learns a head on frozen features"):
        EngineSettings(weights="none", learner="semi")
    assert detection_settings(EngineSettings()).learner == "supervised"  # a detector: boxes, not a head
    with pytest.raises(ConfigError, match="a detector trains with the supervised learner"):
        detection_settings(EngineSettings(learner="semi"))


def test_a_config_called_the_defaults_sets_nothing_an_engine_default_decides():
    from pathlib import Path

    from backend.settings import EngineSettings as Backend
    from isal_core.settings import read_protocol

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*defaults*.json"))
    assert configs, "no configs/*defaults*.json: the reported run of the defaults has no protocol file"
    for path in configs:
        values = read_protocol(path)
        assert not set(values) & set(EngineSettings.model_fields), f"{path.name} overrides an engine default"
        # what the backend does by default, in the protocol's words: its strategy, its cold start
        assert values["strategies"] == [Backend.model_fields["strategy"].default], path.name
        assert values.get("initial_strategy") == "typiclust" and Backend.model_fields["cold_start"].default == "auto"
