"""Every third-party module the product imports (isal_core/, backend/) comes from a distribution that
requirements.txt and pyproject's dependencies declare: an install from either (the Docker image, a user's
pip install) must not meet a ModuleNotFoundError at run time (scipy.stats in the forecast did, once)."""
import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
OWN = {"isal_core", "backend", "bench", "__future__"}
#: Imported only by the optional mmdet adapter (isal_core/tasks/mmdet_fcos.py), declared as the "mmdet" extra.
OPTIONAL = {"mmcv", "mmdet", "mmengine"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(lines) -> set[str]:
    names = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(normalise(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]))
    return names


def imported_modules() -> dict[str, set[str]]:
    """{top-level third-party module: the files that import it}, from the source (nothing is executed)."""
    found: dict[str, set[str]] = {}
    for root in ("isal_core", "backend"):
        for path in (ROOT / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in OWN:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_distribution_is_declared_in_requirements_and_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared_pyproject = requirement_names(project["dependencies"])
    declared_requirements = requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    extras = requirement_names(project.get("optional-dependencies", {}).get("mmdet", []))
    distributions = packages_distributions()
    missing = {}
    for module, files in imported_modules().items():
        if module in OPTIONAL:  # (installed by make test from ../shared/wheels, not everywhere)
            assert files == {"isal_core/tasks/mmdet_fcos.py"}, (module, files)
            if module not in extras:
                missing[module] = "the mmdet extra"
            continue
        assert module in distributions, f"{module} (imported by {sorted(files)}) is not installed here"
        names = {normalise(d) for d in distributions[module]}
        where = [f for f, declared in (("requirements.txt", declared_requirements),
                                       ("pyproject.toml", declared_pyproject)) if not names & declared]
        if where:
            missing[module] = where
    assert missing == {}, missing


def test_the_checker_sees_an_undeclared_import():
    assert requirement_names(["scipy>=1.11  # the forecast", "numpy<2.3", "-r other.txt", "rq[redis]>=2"]) == \
        {"scipy", "numpy", "rq"}
    assert "scipy" in imported_modules()  # isal_core/forecast.py: the case that once shipped undeclared
