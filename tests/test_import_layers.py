"""pyexplain's subpackages import each other in one direction only (no import cycle)."""
from __future__ import annotations

import ast
from pathlib import Path

import pyexplain

ROOT = Path(pyexplain.__file__).parent
SUBPACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every pyexplain module ``path`` imports, at any depth (lazy imports too)."""
    package = ["pyexplain", *path.relative_to(ROOT).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            if not node.module:  # ``from .. import data``: the names may be subpackages
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("pyexplain.")}


def subpackage_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in SUBPACKAGES}
    for name in SUBPACKAGES:
        for path in (ROOT / name).rglob("*.py"):
            for module in _imported_modules(path):
                other = module.split(".")[1]
                if other in graph and other != name:
                    graph[name].add(other)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_subpackages_import_each_other_without_cycles():
    graph = subpackage_graph()
    assert {"data", "models", "methods", "cli"} <= set(graph)
    assert "data" in graph["models"]  # the small models are loaded through pyexplain.data
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
