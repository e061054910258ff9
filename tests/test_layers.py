"""The import graph keeps the architecture: no circles, and data flowing one way.

Every import counts, at module level, inside a function or under TYPE_CHECKING: a
type-only import still says that one layer knows the other. The layers, top down:
cli, app and the test kit; handlers; plugins; dispatch; hub and store; the shared leaves (settings,
frames, metrics...). An import may go down, never up.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "taxi_tornado"

# What a module of each part may not import (by module prefix).
FORBIDDEN = {
    "taxi_tornado.dispatch": ("taxi_tornado.plugins", "taxi_tornado.handlers",
                              "taxi_tornado.services", "taxi_tornado.monitor"),
    "taxi_tornado.hub": ("taxi_tornado.plugins", "taxi_tornado.handlers",
                         "taxi_tornado.dispatch", "taxi_tornado.store",
                         "taxi_tornado.services"),
    "taxi_tornado.store": ("taxi_tornado.plugins", "taxi_tornado.handlers",
                           "taxi_tornado.dispatch", "taxi_tornado.hub",
                           "taxi_tornado.services"),
    "taxi_tornado.plugins": ("taxi_tornado.handlers", "taxi_tornado.app"),
    "taxi_tornado.monitor": ("taxi_tornado.plugins", "taxi_tornado.handlers"),
}
# Plugins that live beside the part they serve: they stand in the plugins' layer.
PLUGIN_MODULES = {"taxi_tornado.dispatch.plugin"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every taxi_tornado module `path` imports, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from taxi_tornado.plugins import admin` imports a module too.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("taxi_tornado")}


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {target for target in imports_of(path) if target in modules} - {name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (depth-first search), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_circles() -> None:
    # A package's __init__ importing its own submodules is not a circle of layers.
    graph = {name: {target for target in targets if not name.startswith(target + ".")}
             for name, targets in import_graph().items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_no_module_imports_a_layer_above_it() -> None:
    wrong = []
    for name, targets in import_graph().items():
        if name in PLUGIN_MODULES:
            continue
        for part, forbidden in FORBIDDEN.items():
            if name != part and not name.startswith(part + "."):
                continue
            wrong += [f"{name} imports {target}" for target in sorted(targets)
                      if target.startswith(forbidden)]
    assert not wrong, "; ".join(wrong)


def test_nothing_but_the_runners_import_the_app() -> None:
    # The CLI, and the plugin authors' test kit, which starts a server as `serve` does.
    importers = sorted(name for name, targets in import_graph().items()
                       if "taxi_tornado.app" in targets)
    assert importers == ["taxi_tornado.cli", "taxi_tornado.testing"]


def test_the_checker_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
