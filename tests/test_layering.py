"""Imports run one way (README, Development): no module of the engine imports, even inside a function, a
module that imports it back. The one allowed edge up is ``Warehouse.query``, the documented entry point."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

#: (importer, imported) edges allowed to close a circle
ALLOWED = {("factory.warehouse", "factory.sql")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere (functions included), except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def resolve(name: str) -> None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    resolve(alias.name)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                for alias in child.names:
                    resolve(f"{child.module}.{alias.name}")
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found - {module_name(path)}


def test_no_import_circles():
    files = [*ROOT.glob("factory/**/*.py"), *ROOT.glob("stages/*.py")]
    modules = {module_name(f) for f in files}
    graph = {module_name(f): imports(f, modules) for f in files}
    # a package importing its own submodules (re-exports) is not an edge up
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(d for d in graph.get(m, ()) if (m, d) not in ALLOWED)
        return False

    circles = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                     if (a, b) not in ALLOWED and reaches(b, a))
    assert not circles, "imports running back up: " + "; ".join(circles)
    assert all(b in graph[a] for a, b in ALLOWED), "an allowed edge is gone: remove it from ALLOWED"
