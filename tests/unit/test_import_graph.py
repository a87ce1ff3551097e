"""The import graph of the ``dapfab`` package (issue 23): no cycle, and the lower layer
(``dapfab.execution``, ``dapfab.connection`` and all they import) never imports the keeper
or the task tree above it.

The graph is read from the source with :mod:`ast`, not from ``sys.modules``, so an import
counts wherever it is written: at module level and inside functions alike (it runs later,
but it runs). ``import dapfab.x``, ``from dapfab.x import y`` (an arrow to ``dapfab.x.y``
when that is a module, else to ``dapfab.x``), relative imports and a literal
``import_module("dapfab.x")`` are arrows; imports under ``if TYPE_CHECKING:`` never run and
are not. ``dapfab.testing`` (the lab: a user of dapfab, not a part of it) is left out. Not
seen: ``dapfab/__init__.py``'s lazy table of the public API (names looked up, not written
in an import), which could only close a cycle if a module imported ``dapfab`` itself.

Packages: importing ``dapfab.a.b`` runs ``dapfab/a/__init__.py`` first, but that implicit
step is not an arrow. Were it one, every package whose ``__init__`` imports its own
submodules (``dapfab.tasks`` builds its tree from ``dapfab.tasks.k8s``) would be a cycle,
though Python runs that order fine. A module that imports its package's ``__init__``
explicitly (``from dapfab.tasks import ns`` in ``dapfab.tasks.k8s``) draws an arrow, and
with the ``__init__`` importing it that is a real cycle: it would read a half-made module.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dapfab"
LEFT_OUT = ("dapfab.testing",)
LOWER = ("dapfab.execution", "dapfab.connection")
ABOVE = ("dapfab.keeper", "dapfab.tasks")

Graph = dict[str, set[str]]


def _inside(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def _modules(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root`` by dotted name (``__init__`` as its package)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _run_nodes(tree: ast.AST, expressions: bool) -> list[ast.AST]:
    """The nodes of ``tree`` that can run: everything but the body of ``if TYPE_CHECKING:``;
    without ``expressions``, only statements (an import statement is never inside an
    expression, and skipping them makes the walk three times faster)."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and _type_checking(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(child for child in ast.iter_child_nodes(node)
                        if expressions or not isinstance(child, ast.expr))
    return found


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names one node imports (not yet filtered to dapfab's modules)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            anchor = package[: len(package) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Call) and _called(node) == "import_module" and node.args:
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return [first.value]
    return []


def _called(call: ast.Call) -> str | None:
    """The name a call calls: ``f`` for ``f(...)`` and ``m.f(...)``."""
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def import_graph(root: Path = PACKAGE, left_out: tuple[str, ...] = LEFT_OUT) -> Graph:
    """Module -> the dapfab modules it imports, for every module under ``root``."""
    modules = {name: path for name, path in _modules(root).items()
               if not _inside(name, left_out)}
    graph: Graph = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        arrows = set()
        source = path.read_text(encoding="utf-8")
        for node in _run_nodes(ast.parse(source, str(path)), "import_module" in source):
            names = _imported(node, module, is_package)
            if isinstance(node, ast.ImportFrom):
                # from X import y: the submodule X.y if there is one, else X itself
                base, *members = names
                submodules = [name for name in members if name in modules]
                names = submodules if len(submodules) == len(members) else [base, *submodules]
            arrows.update(name for name in names if name in modules and name != module)
        graph[module] = arrows
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph.get(module, ())):
            if target in on_path:
                return path[path.index(target):] + [target]
            if target not in done and (cycle := visit(target)):
                return cycle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def reach(graph: Graph, starts: tuple[str, ...]) -> dict[str, list[str]]:
    """Every module reachable from ``starts`` (themselves included) -> a shortest import
    path to it from one of them."""
    paths = {start: [start] for start in starts}
    todo = deque(starts)
    while todo:
        module = todo.popleft()
        for target in sorted(graph.get(module, ())):
            if target not in paths:
                paths[target] = paths[module] + [target]
                todo.append(target)
    return paths


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def test_the_graph_sees_imports_at_every_level(graph):
    assert "dapfab.tasks.k8s" in graph["dapfab.tasks"]  # a package __init__ its submodule
    assert "dapfab.run" in graph["dapfab.tasks.edge"]  # inside a function
    assert "dapfab.errors" in graph["dapfab"]  # import_module("dapfab.errors")
    assert "dapfab.keeper.wire" in graph["dapfab.keeper.server"]  # from package import module
    assert not any(_inside(module, LEFT_OUT) for module in graph)


def test_no_cycle_among_dapfab_modules(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_execution_and_connection_never_reach_the_keeper_or_the_tasks(graph):
    # Only the paths whose last arrow crosses upward: what the keeper imports in turn is noise.
    upward = [" -> ".join(path) for module, path in sorted(reach(graph, LOWER).items())
              if _inside(module, ABOVE) and not _inside(path[-2], ABOVE)]
    assert not upward, "the lower layer imports what sits above it: " + "; ".join(upward)
