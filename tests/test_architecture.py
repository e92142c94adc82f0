"""The shape of the house: arrows one way, small modules and functions, a Docker image without bench/."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imported_names(path: Path) -> set[str]:
    """Every module a file imports: import statements anywhere (lazy ones in functions too), and
    string arguments of importlib.import_module / __import__."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def test_the_engine_imports_nothing_from_backend_or_bench():
    wrong = {str(p.relative_to(REPO)): sorted(n for n in imported_names(p) if n.split(".")[0] in ("backend", "bench"))
             for p in modules("isal_core")}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_backend_imports_nothing_from_bench():
    wrong = {str(p.relative_to(REPO)): sorted(n for n in imported_names(p) if n.split(".")[0] == "bench")
             for p in modules("backend")}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_import_check_sees_lazy_and_string_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from backend.simulate import x\n    import importlib\n"
                     "    importlib.import_module('bench.scoring')\n")
    assert {"backend.simulate", "bench.scoring"} <= imported_names(probe)


@pytest.mark.parametrize("package", ["isal_core", "backend"])
def test_modules_and_functions_are_small(package):
    long_modules, long_functions = {}, {}
    for path in modules(package):
        text = path.read_text()
        name = str(path.relative_to(REPO))
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions[f"{name}:{node.name}"] = length
    assert long_modules == {} and long_functions == {}


def test_the_docker_image_does_not_ship_the_benchmarks():
    copies = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.strip().startswith("COPY")]
    assert copies and not any("bench" in line for line in copies)
