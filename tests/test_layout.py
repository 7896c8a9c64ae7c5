"""The layout reads like the data flow: no module of hpcbench imports, at its top or lazily inside
a function, a module that imports it back (directly or through others)."""
from __future__ import annotations

import ast
from pathlib import Path

import hpcbench

PACKAGE = Path(hpcbench.__file__).parent


def _import_graph() -> dict[str, set[str]]:
    paths = {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
             for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in paths else node.module
                             for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {target for target in imported if target in paths and target != name}
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for target in graph[module]:
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                stack.append((target, path + [target]))
    return None


def test_no_module_imports_one_that_imports_it_back():
    graph = _import_graph()
    assert len(graph) > 50  # every module was read
    cycles = [cycle for cycle in (_cycle_through(graph, name) for name in sorted(graph)) if cycle]
    assert not cycles, " | ".join(" -> ".join(cycle) for cycle in cycles[:5])
