"""The package's modules import one another in one direction only.

Imports inside functions count: they only postpone a cycle to the moment the function runs
(and hide it from readers). Imports under `if TYPE_CHECKING:` do not: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import agenstra_jupyter

PACKAGE = Path(agenstra_jupyter.__file__).parent
ROOT = PACKAGE.name
# The kernel side, in its one-way order: each may import only those before it.
KERNEL_ORDER = ["variables", "sessions", "client", "magics", "widgets", "runner"]


def package_modules(folder: Path = PACKAGE, prefix: str = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its __init__.py)."""
    found = {prefix: folder / "__init__.py"}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".py" and path.name != "__init__.py":
            found[f"{prefix}.{path.stem}"] = path
        elif path.is_dir() and (path / "__init__.py").exists():
            found.update(package_modules(path, f"{prefix}.{path.name}"))
    return found


def _typing_only(tree: ast.Module) -> set[int]:
    """The nodes under `if TYPE_CHECKING:` (or `if typing.TYPE_CHECKING:`)."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(inner) for child in node.body for inner in ast.walk(child))
    return hidden


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, base] if base else parts)
    return [f"{base}.{alias.name}" for alias in node.names]  # a submodule, or a name in base


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports, anywhere in its code but type-checking blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    hidden = _typing_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in hidden:
            for target in _targets(node, package):
                while target not in known and "." in target:
                    target = target.rpartition(".")[0]
                if target in known and target != name:
                    found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path (first == last), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert f"{ROOT}.client" in graph and f"{ROOT}.manager.app" in graph  # it saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_kernel_side_depends_one_way():
    graph = import_graph()
    for position, module in enumerate(KERNEL_ORDER):
        later = {f"{ROOT}.{name}" for name in KERNEL_ORDER[position + 1:]}
        assert not graph[f"{ROOT}.{module}"] & later, f"{module} imports a module above it"


def test_the_cycle_finder_sees_imports_inside_functions(tmp_path):
    """The check itself can fail: a cycle closed by a function-level import is found."""
    (tmp_path / "a.py").write_text("from .b import B\n")
    (tmp_path / "b.py").write_text("from typing import TYPE_CHECKING\n"
                                   "if TYPE_CHECKING:\n    from .c import C\n"
                                   "def later():\n    from .a import A\n")
    (tmp_path / "c.py").write_text("from .b import later\n")
    known = {"p.a", "p.b", "p.c"}
    graph = {name: imports_of(name, tmp_path / f"{name[2:]}.py", known) for name in known}
    assert graph == {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": {"p.b"}}
    assert find_cycle(graph) == ["p.a", "p.b", "p.a"]
