"""The shape of the house: one-way layers, no import circles, small folders, modules and functions.

The layers are the ones docs/architecture.md draws. Every import counts, lazy ones inside
functions and importlib.import_module("...") strings included; a module may import its own
layer and the layers below it, never above, and no set of modules may import each other in
a circle. The probes at the end show each check failing on a package made to break it.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
MAX_FOLDER_MODULES = 12

#: Lowest first. A module belongs to the first layer one of whose prefixes names it or a package above it.
ENGINE_LAYERS = [
    ("errors", ["isal_core.errors"]),
    ("utils", ["isal_core.utils", "isal_core.forecast"]),
    ("data", ["isal_core.data"]),
    ("nets", ["isal_core.nets"]),
    ("settings", ["isal_core.settings"]),
    ("tasks", ["isal_core.tasks"]),
    ("train", ["isal_core.train"]),
    ("influence", ["isal_core.influence"]),
    ("selection", ["isal_core.selection"]),
    ("learner", ["isal_core.learner"]),
    ("simulation", ["isal_core.simulation"]),
    ("cli", ["isal_core.cli", "isal_core"]),  # the package's public names (its __init__) are the top
]
BACKEND_LAYERS = [
    ("errors, settings, metrics", ["backend.errors", "backend.settings", "backend.metrics"]),
    ("labelstudio", ["backend.labelstudio"]),
    ("tasktypes", ["backend.tasktypes"]),
    ("storage", ["backend.storage"]),
    ("job", ["backend.job"]),
    ("scheduling", ["backend.scheduling"]),
    ("model", ["backend.model"]),
    ("web, tools, entry points", ["backend.web", "backend.tools", "backend.worker", "backend.__main__", "backend"]),
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> set[str]:
    """Every module a file imports, resolved to absolute names: import statements anywhere (lazy ones in
    functions too, relative ones resolved), `from X import name` as X.name when that is a module, and
    string arguments of importlib.import_module / __import__."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the modules of `packages` it imports (only names that are modules of theirs)."""
    files = [p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))]
    modules = {module_name(p, root): p for p in files}
    return {m: {t for t in imports_of(p, root) if t in modules and t != m} for m, p in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected sets of more than one module (Tarjan): each is an import circle."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str, layers) -> int | None:
    best = None
    for position, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (position, len(prefix))
    return None if best is None else best[0]


def layer_violations(graph: dict[str, set[str]], layers) -> list[str]:
    """Imports that run against the layer order (a module importing a layer above its own), and
    modules that belong to no layer."""
    wrong = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module, layers)
        if mine is None:
            wrong.append(f"{module} belongs to no layer")
            continue
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            if theirs is not None and theirs > mine:
                wrong.append(f"{module} ({layers[mine][0]}) imports {target} ({layers[theirs][0]})")
    return wrong


# ---------------------------------------------------------------------------
# the project


def test_no_import_circles_anywhere():
    assert circles(import_graph(REPO, ("isal_core", "backend", "bench"))) == []


@pytest.mark.parametrize("package, layers", [("isal_core", ENGINE_LAYERS), ("backend", BACKEND_LAYERS)])
def test_imports_follow_the_layer_order(package, layers):
    graph = {m: t for m, t in import_graph(REPO, ("isal_core", "backend")).items() if m.split(".")[0] == package}
    assert layer_violations(graph, layers) == []


def test_the_engine_imports_nothing_from_backend_or_bench():
    wrong = {str(p.relative_to(REPO)): sorted(n for n in imports_of(p, REPO) if n.split(".")[0] in ("backend", "bench"))
             for p in sorted((REPO / "isal_core").rglob("*.py"))}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_backend_imports_nothing_from_bench():
    wrong = {str(p.relative_to(REPO)): sorted(n for n in imports_of(p, REPO) if n.split(".")[0] == "bench")
             for p in sorted((REPO / "backend").rglob("*.py"))}
    assert {k: v for k, v in wrong.items() if v} == {}


@pytest.mark.parametrize("package", ["isal_core", "backend"])
def test_folders_modules_and_functions_are_small(package):
    crowded, long_modules, long_functions = {}, {}, {}
    by_folder = defaultdict(list)
    for path in sorted((REPO / package).rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(REPO))
        if path.name != "__init__.py":
            by_folder[str(path.parent.relative_to(REPO))].append(path.name)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions[f"{name}:{node.name}"] = length
    crowded = {folder: len(names) for folder, names in by_folder.items() if len(names) > MAX_FOLDER_MODULES}
    assert (crowded, long_modules, long_functions) == ({}, {}, {})


def test_the_docker_image_does_not_ship_the_benchmarks():
    copies = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.strip().startswith("COPY")]
    assert copies and not any("bench" in line for line in copies)


# ---------------------------------------------------------------------------
# probes: each check fails on a package made to break it


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_circle_check_sees_lazy_relative_and_string_imports(tmp_path):
    write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "def f():\n    from ..high import b\n",               # lazy and relative
        "pkg/high/__init__.py": "",
        "pkg/high/b.py": "import importlib\nimportlib.import_module('pkg.high.c')\n",  # a string
        "pkg/high/c.py": "from pkg.low.a import f\n",
        "pkg/ok.py": "from .low import a\n",
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.low.a"] == {"pkg.high", "pkg.high.b"} and graph["pkg.ok"] == {"pkg.low", "pkg.low.a"}
    assert circles(graph) == [["pkg.high.b", "pkg.high.c", "pkg.low.a"]]


def test_the_layer_check_sees_an_import_upwards_and_a_module_of_no_layer(tmp_path):
    write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "def f():\n    import pkg.high\n",
        "pkg/high.py": "from . import low\n",
        "pkg/stray.py": "",
    })
    layers = [("low", ["pkg.low"]), ("high", ["pkg.high", "pkg"])]
    graph = import_graph(tmp_path, ("pkg",))
    assert layer_violations(graph, layers) == ["pkg.low (low) imports pkg.high (high)"]
    assert layer_violations(graph, layers[:1]) == ["pkg belongs to no layer", "pkg.high belongs to no layer",
                                                   "pkg.stray belongs to no layer"]
