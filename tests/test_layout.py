"""The package layout (issue 16): Ray only in ``grounding.distributed`` (and the ``rayjobs`` CLIs), no
import circles, a short top level, a docstring on every package.

Imports are read with ``ast`` from every import statement, those inside functions too: a lazy import
is still a dependency, and lazy imports were how the two old circles hid.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "grounding"
RAY_LAYER = PACKAGE / "distributed"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_names(path: Path) -> list[str]:
    """Absolute names each import statement of ``path`` loads (``from a import b`` -> ``a.b`` when
    ``a.b`` is a module of ours, else ``a``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names]
    return names


def our_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = {our_module(n) for n in imported_names(path) if n.split(".")[0] == "grounding"}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (depth-first search), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_only_the_ray_layer_imports_ray():
    offenders = [f"{name}: {n}" for name, path in sorted(MODULES.items())
                 if not path.is_relative_to(RAY_LAYER)
                 for n in imported_names(path) if n == "ray" or n.startswith("ray.")]
    assert offenders == [], "Ray imported outside grounding/distributed/:\n" + "\n".join(offenders)


def test_there_is_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle():
    """The check above could pass vacuously; it must see a circle when there is one."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_top_level_is_short_and_every_package_says_what_it_owns():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 10, entries
    packages = [p for p in PACKAGE.rglob("__init__.py")]
    assert len(packages) >= 9
    for init in packages:
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT)} has no docstring"
