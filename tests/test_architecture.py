"""The package's shape, checked on every run: rooms import only the rooms below them (docs/architecture.md),
no module imports another that imports it back, no source file grows past 500 lines, and only the
prep entry point wires ``prep.build``. Imports are read from the source (function-level ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medalign"
#: rooms from the ground up; a module may import its own room and the rooms before it
ROOMS = ["ground", "io", "config", "reports", "prep", "synth", "data", "models", "losses", "train", "tasks", "serve", "cli"]
#: single modules at the package's top level that belong to the ground floor
GROUND = {"medalign", "medalign.errors", "medalign.metrics", "medalign.progress", "medalign.devices"}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every ``medalign`` module ``path`` imports, at any depth of the file (``from a import b``: ``a.b`` when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medalign":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "medalign"}
    return out


def _room(module: str) -> str:
    if module in GROUND:
        return "ground"
    room = module.split(".")[1]
    assert room in ROOMS, f"{module}: room '{room}' is not in the layer list; place it in ROOMS (and docs/architecture.md)"
    return room


def test_rooms_import_only_rooms_below_them():
    upward = [f"{m} imports {t}" for m, p in sorted(MODULES.items()) for t in sorted(_imports(p))
              if ROOMS.index(_room(t)) > ROOMS.index(_room(m))]
    assert not upward, "\n".join(upward)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each an import circle."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_import_circle():
    graph = {m: {t for t in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ importing its own modules is how Python packages are built: not a circle
    graph = {m: {t for t in ts if not (m in t and t.startswith(m + "."))} for m, ts in graph.items()}
    assert not _circles(graph)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_source_file_stays_under_the_limit(module):
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{MODULES[module]}: {lines} lines (split it by job, as prep/ is split)"


def test_only_the_prep_entry_point_wires_prep_build():
    importers = sorted(m for m, p in MODULES.items() if "medalign.prep.build" in _imports(p))
    assert importers == ["medalign.cli.commands"], importers


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path):
    """The scanner itself: a planted upward import (inside a function) and a planted circle are found."""
    planted = tmp_path / "m.py"
    planted.write_text("def f():\n    from medalign.cli.main import main\n")
    assert "medalign.cli.main" in _imports(planted)
    assert ROOMS.index(_room("medalign.cli.main")) > ROOMS.index(_room("medalign.io.volume"))
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []
