"""The layout keeps its dependencies pointing one way (../shared/DESIGN.md): no module of the
project's apps imports, directly or round a circle, a module that imports it back, and
`journeys` (the core) imports none of the other apps.

Read from the source with `ast`, so every import counts: those inside functions (the usual
way a circle is hidden) and those only for type checkers. Migrations are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("journeys", "channels_app", "agents", "experiments")


def _modules(root: Path, apps: tuple[str, ...]) -> dict[str, Path]:
    found = {}
    for app in apps:
        for path in (root / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _known(name: str, modules: dict[str, Path]) -> str:
    """The project module `name` lives in ('' for a library): `a.b.func` -> `a.b`."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph(root: Path = ROOT, apps: tuple[str, ...] = APPS) -> dict[str, set[str]]:
    """module -> the project modules it imports (a package's `__init__` stands for the package)."""
    modules = _modules(root, apps)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(_known(alias.name, modules) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod.
                targets.update(_known(f"{base}.{alias.name}", modules) for alias in node.names)
        graph[name] = targets - {"", name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import each other round a circle (Tarjan's strongly connected
    components), as the circle's path, e.g. ['a', 'b', 'a']."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(start: str) -> None:  # iterative, so a deep chain of imports cannot overflow
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return [_circle(set(group), graph) for group in groups]


def _circle(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """One circle through a group, for the failure message: a -> b -> ... -> a."""
    start = min(group)
    path, seen = [start], {start}
    while True:
        nxt = sorted(t for t in graph[path[-1]] if t in group)
        back = start if start in nxt else None
        if back is not None and len(path) > 1:
            return [*path, start]
        fresh = [t for t in nxt if t not in seen]
        if not fresh:
            return [*path, next(t for t in nxt)]
        path.append(fresh[0])
        seen.add(fresh[0])


def test_no_module_imports_round_a_circle():
    # given the project's apps as an import graph
    graph = import_graph()

    # when circles are looked for
    cycles = import_cycles(graph)

    # then there are none (each pair was given one direction by moving the shared piece down)
    assert graph["journeys.services.workflows"]  # the graph is read (not trivially empty)
    assert not cycles, "modules that import each other: " + "; ".join(" -> ".join(c) for c in cycles)


def test_journeys_imports_none_of_the_other_apps():
    graph = import_graph()

    crossing = {name: sorted(t for t in targets if t.split(".")[0] != "journeys")
                for name, targets in graph.items() if name.split(".")[0] == "journeys"}

    assert {name: targets for name, targets in crossing.items() if targets} == {}


@pytest.mark.parametrize("sources, circle", [
    ({"a": "from b import x", "b": "def f():\n    from a import y"}, ["a", "b", "a"]),
    ({"a": "from . import b", "b": "import c", "c": "from typing import TYPE_CHECKING\n"
                                                     "if TYPE_CHECKING:\n    from a import z"}, ["a", "b", "c", "a"]),
])
def test_the_check_sees_hidden_circles(tmp_path, sources, circle):
    """The check itself: a circle closed by an import inside a function or only for type checkers
    is still a circle."""
    package = tmp_path / "journeys"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, code in sources.items():
        (package / f"{name}.py").write_text(code.replace("from b", "from journeys.b").replace("from a", "from journeys.a")
                                            .replace("import c", "import journeys.c"))

    cycles = import_cycles(import_graph(tmp_path, ("journeys",)))

    assert cycles == [[f"journeys.{m}" for m in circle]]
