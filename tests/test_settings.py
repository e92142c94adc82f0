"""One settings schema: the same defaults everywhere, flags derived from it, nothing silently dropped."""
from __future__ import annotations

import os

import pytest

from backend.settings import EngineSettings as BackendEngine
from backend.settings import Settings
from isal_core.cli import build_parser
from isal_core.errors import ConfigError
from isal_core.settings import EngineSettings, validate
from isal_core.simulation.config import SimulationConfig
from isal_core.influence.stest import CG, LiSSA, solver_from


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
