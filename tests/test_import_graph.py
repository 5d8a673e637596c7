"""No import circle among instasal's modules, and no import hidden inside a library function.

Every ``import`` statement counts, at module level, inside functions and under ``TYPE_CHECKING``
alike: a circle that only type checking or a late import closes is still a circle a reader must
untangle. The finder is first run on a hand-made package whose circles are known.

Outside ``cli/`` (which imports late so that bad options are refused before torch loads) a function
may import only an optional extra (nnU-Net v2, Ray); packages that re-export torch-backed names do
so through :func:`instasal.lazy.lazy_exports`, naming them under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import instasal


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module names of the package at ``root`` (``__init__`` named by its package)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, package: str, modules: set[str]) -> set[str]:
    """The package's modules an import statement loads: ``from a import b`` loads ``a.b`` where
    that is a module, else ``a`` (whose ``b`` it reads)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & modules
    base = node.module or ""
    if node.level:
        parents = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parents, base] if base else parents)
    named = (f"{base}.{alias.name}" for alias in node.names)
    return {name if name in modules else base for name in named} & modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= _imported(node, package, set(modules)) - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            component: list[str] = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return sorted(found)


def hand_made_package(root: Path, files: dict[str, str]) -> Path:
    """A package ``pkg`` under ``root`` with these files (relative path → text)."""
    package = root / "pkg"
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def test_the_finder_reports_the_circles_of_a_hand_made_package(tmp_path: Path) -> None:
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def late():\n    from pkg.sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\n",
        "d.py": "import pkg.e\n",
        "e.py": "from . import sub\nimport numpy\n",
    }
    graph = import_graph(hand_made_package(tmp_path, files))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.e"] == {"pkg.sub"}
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_instasal_has_no_import_circle() -> None:
    graph = import_graph(Path(instasal.__file__).parent)
    assert len(graph) > 50
    assert circles(graph) == []


OPTIONAL_EXTRAS = {"nnunetv2", "ray"}


def late_imports(root: Path) -> list[str]:
    """``module:line name`` of every import inside a function outside ``cli/``, other than of an
    optional extra."""
    found = []
    for name, path in _modules(root).items():
        if ".cli" in name or name.endswith(".cli"):
            continue
        for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    targets = [node.module or "."]
                else:
                    continue
                if any(target.split(".")[0] not in OPTIONAL_EXTRAS for target in targets):
                    found.append(f"{name}:{node.lineno} {', '.join(targets)}")
    return found


def test_the_late_import_finder_on_a_hand_made_package(tmp_path: Path) -> None:
    files = {
        "__init__.py": "def __getattr__(name):\n    from pkg import a\n",
        "a.py": "def f():\n    import ray\n    from nnunetv2.x import y\n",
        "b.py": "import numpy\ndef g():\n    from pkg import a\n",
        "cli/__init__.py": "",
        "cli/c.py": "def h():\n    import torch\n",
    }
    assert late_imports(hand_made_package(tmp_path, files)) == ["pkg:2 pkg", "pkg.b:3 pkg"]


def test_library_functions_import_nothing_late() -> None:
    assert late_imports(Path(instasal.__file__).parent) == []


# The layers of docs/architecture.md: a module imports from its own layer or the ones below.
LAYERS = {
    "errors": 0,
    "typing": 0,
    "lazy": 0,
    "provenance": 0,
    "io": 1,
    "dataset": 1,
    "channels": 1,
    "folders": 1,
    "progress": 1,
    "model_sources": 1,
    "instances": 2,
    "saliency": 2,
    "prepare": 3,
    "models": 3,
    "trust": 3,
    "pipeline": 4,
    "report": 5,
    "analyses": 5,
    "experiments": 5,
    "training": 5,
    "phantoms": 5,
    "cli": 6,
}
# the one link against the layers the page names: the last stage of a subject's run is its report
UPWARD_ALLOWED = {("pipeline.explain", "report")}
PACKAGE_LAYER = max(LAYERS.values()) + 1  # the package itself re-exports from every layer


def upward_imports(graph: dict[str, set[str]], package: str) -> list[str]:
    """``importer -> imported`` for every import of a higher layer than the importer's (the
    package itself counts as above all), other than the allowed ones; a module outside the
    table is reported as ``module: no layer``."""

    def place(module: str) -> tuple[str, int | None]:
        inner = module.removeprefix(package).lstrip(".")
        if not inner:
            return "", PACKAGE_LAYER
        top = inner.split(".")[0]
        return inner, LAYERS.get(top)

    found = []
    for module in sorted(graph):
        inner, layer = place(module)
        if not inner:
            continue
        if layer is None:
            found.append(f"{inner}: no layer")
            continue
        for target in sorted(graph[module]):
            target_inner, target_layer = place(target)
            allowed = (inner, target_inner.split(".")[0]) in UPWARD_ALLOWED
            if target_layer is not None and target_layer > layer and not allowed:
                found.append(f"{inner} -> {target_inner or package}")
    return found


def test_the_layer_check_on_a_hand_made_graph() -> None:
    graph = {
        "instasal": {"instasal.cli"},
        "instasal.io": {"instasal.errors"},
        "instasal.saliency.engines": {"instasal.pipeline.settings", "instasal.io"},
        "instasal.pipeline.explain": {"instasal.report.html"},
        "instasal.phantoms.bids_writer": {"instasal"},
        "instasal.extra": set(),
    }
    assert upward_imports(graph, "instasal") == [
        "extra: no layer",
        "phantoms.bids_writer -> instasal",
        "saliency.engines -> pipeline.settings",
    ]


def test_instasal_modules_import_only_their_layer_and_below() -> None:
    graph = import_graph(Path(instasal.__file__).parent)
    assert upward_imports(graph, "instasal") == []
