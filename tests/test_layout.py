"""Who may import whom: the project's import graph has no circle, and every arrow points down a layer.

The layers, bottom to top: gateway/ (the core), evaluators/, plugins/, flywheel/ (the offline tools,
which read what plugins stored). The graph is read from the source with `ast`: every import, at
the top of a module or inside a function (an import that waits for a call still ties the two
modules together), relative ones resolved. Importing a submodule runs its package's __init__ too;
that implicit arrow is not counted, so a package's __init__ may import its own submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

from gateway.known_plugins import DEFAULT_PLUGINS

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("gateway", "evaluators", "plugins", "flywheel")  # bottom to top: an import points down, or stays


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (its file, whether it is a package's __init__)."""
    found = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _project_module(name: str) -> str | None:
    """The project module an import of `name` loads: itself, or the nearest package above it that exists."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path, is_package: bool) -> list[tuple[str, int]]:
    """(project module, line) for each import in the file; `from package import submodule` names the submodule."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                assert node.level <= len(base), f"{path}:{node.lineno}: a relative import above the top package"
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source for alias in node.names
            ]
        else:
            continue
        for name in names:
            target = _project_module(name)
            if target is not None and target != module:
                found.append((target, node.lineno))
    return found


GRAPH = {module: _imported(module, path, is_package) for module, (path, is_package) in MODULES.items()}


def _layer(module: str) -> int:
    return LAYERS.index(module.partition(".")[0])


def _a_cycle() -> list[str] | None:
    """One import circle as [a, b, ..., a], or None when there is none."""
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target, _ in GRAPH[module]:
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_graph_is_read():
    """A sanity check on the reader: known arrows of each kind are found."""
    assert "gateway.context" in {t for t, _ in GRAPH["gateway.proxy"]}  # from .context import
    assert "gateway.admin.common" in {t for t, _ in GRAPH["gateway.admin.registry"]}  # from .common import
    assert "gateway.admin.registry" in {t for t, _ in GRAPH["gateway.admin"]}  # from . import registry
    assert "plugins.traffic_log.plugin" in {t for t, _ in GRAPH["flywheel.traffic_source"]}  # inside a function
    assert "gateway.text.embeddings" in {t for t, _ in GRAPH["evaluators.metrics"]}  # inside a method


def test_no_import_circles():
    cycle = _a_cycle()
    assert cycle is None, "an import circle: " + " -> ".join(cycle)


def test_every_import_points_down_a_layer():
    """gateway/ imports nothing above it; evaluators/ only gateway/; plugins/ no flywheel/."""
    upward = [
        f"{MODULES[module][0].relative_to(ROOT)}:{line}: {module} imports {target}"
        for module, targets in GRAPH.items()
        for target, line in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == [], "imports that point up (" + " < ".join(LAYERS) + "):\n" + "\n".join(upward)


def test_plugins_holds_only_plugins():
    """Each entry of plugins/ is a plugin named in DEFAULT_PLUGINS, a module or a package holding its helpers."""
    named = {
        target.partition(":")[0].split(".")[1] for target in DEFAULT_PLUGINS.values() if target.startswith("plugins.")
    }
    entries = {
        p.name.removesuffix(".py") for p in (ROOT / "plugins").iterdir() if p.name not in ("__init__.py", "__pycache__")
    }
    assert entries - named == set(), "in plugins/ but not a plugin of gateway.known_plugins.DEFAULT_PLUGINS"
