"""The import graph of the package has no cycle, function-level imports included; nothing below the CLI imports it.

Every module's source is read with :mod:`ast` (nothing is imported), so an import inside a function counts like one
at the top. An edge goes to the module an import statement names (``from ..storage import open_store`` ->
``shoal.storage``; ``from .. import filters`` -> ``shoal.filters``), not to the packages above it: Python runs those
``__init__`` files too, but every submodule would then form a "cycle" with its own package.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repo root IS the package `shoal`
SKIP = {"tests", "bench", "build", "docs", ".venv", ".git", ".hypothesis"}

def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or ".egg-info" in rel.parts[0]:
            continue
        parts = ["shoal", *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "shoal.filters" in graph["shoal.index.osq"]  # `from .. import filters`
    assert "shoal.errors" in graph["shoal"]  # the package's own __init__
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_nothing_below_the_cli_imports_it():
    graph = import_graph()
    users = sorted(m for m, ts in graph.items() if not m.startswith("shoal.cli")
                   and any(t == "shoal.cli" or t.startswith("shoal.cli.") for t in ts))
    assert users == []


def test_filters_is_a_leaf_package():
    graph = import_graph()
    outside = sorted((m, t) for m, ts in graph.items() if m.startswith("shoal.filters")
                     for t in ts if not t.startswith("shoal.filters"))
    assert outside == []
