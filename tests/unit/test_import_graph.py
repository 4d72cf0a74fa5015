"""The import graph of our top-level packages follows the data flow (DESIGN.md's package table)
and has no cycles, neither between packages nor between modules.

Every ``import`` / ``from ... import`` statement counts, also the lazy ones inside functions (a
lazy import against the data flow is still a dependency against it). The graph is read from the
source with :mod:`ast`, so the test needs none of the heavy dependencies.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "scenegen", "vlms", "actstore", "probes", "interventions", "study",
            "organisms")

#: package -> the packages of ours it may import (DESIGN.md, plus the study layer and the
#: organisms on top, and ``common``'s shared helpers below everything). ``cli`` may import
#: everything.
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "scenegen": {"common"},
    "actstore": {"common"},
    "vlms": {"common", "scenegen", "actstore"},
    "probes": {"common", "actstore"},
    "interventions": {"common", "vlms", "actstore", "probes", "scenegen"},
    "organisms": {"common", "vlms", "scenegen", "actstore", "probes"},
    "study": {"common", "scenegen", "vlms", "actstore", "probes", "interventions", "organisms"},
    "cli": set(PACKAGES),
}


def _modules(root: Path = ROOT) -> dict[str, Path]:
    mods = {"cli": root / "cli.py"}
    for pkg in PACKAGES:
        for p in (root / pkg).rglob("*.py"):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


def _targets(mod: str, is_pkg: bool, node: ast.AST, mods: dict[str, Path]) -> set[str]:
    """Our modules one import statement loads (the deepest existing module of each name)."""

    def ours(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            where = ".".join(base + ([node.module] if node.module else []))
        else:
            where = node.module or ""
        # ``from pkg import sub`` loads the submodule; ``from pkg import name`` loads pkg
        names = [f"{where}.{a.name}" if f"{where}.{a.name}" in mods else where
                 for a in node.names]
    return {t for t in map(ours, names) if t and t != mod}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> our modules it imports (module-level and lazy imports alike)."""
    mods = _modules(root)
    graph = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[mod] = set().union(*[_targets(mod, path.name == "__init__.py", n, mods)
                                   for n in ast.walk(tree)
                                   if isinstance(n, (ast.Import, ast.ImportFrom))])
    return graph


def _package(mod: str) -> str:
    return mod.split(".")[0]


def package_edges(graph: dict[str, set[str]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(package, package) -> the module imports that make the edge."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for a, targets in graph.items():
        for b in targets:
            if _package(a) != _package(b):
                out.setdefault((_package(a), _package(b)), []).append((a, b))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
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
                    found.append(sorted(comp))
    return found


# --------------------------------------------------------------------------- the checker itself
def test_cycle_finder_and_edge_reader_on_hand_made_graphs(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert sorted(map(tuple, cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}))) == [
        ("a", "b"), ("c", "d")]
    # a small tree: a lazy import inside a function counts, ``from . import x`` is the module x
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "cli.py").write_text("import study\n")
    (tmp_path / "vlms" / "a.py").write_text("from . import b\n")
    (tmp_path / "vlms" / "b.py").write_text("def f():\n    from study.x import y\n")
    (tmp_path / "study" / "x.py").write_text("from vlms.a import z\n")
    g = import_graph(tmp_path)
    assert g["vlms.a"] == {"vlms.b"} and g["vlms.b"] == {"study.x"}
    assert g["cli"] == {"study"}
    assert cycles(g) == [["study.x", "vlms.a", "vlms.b"]]
    assert set(package_edges(g)) == {("vlms", "study"), ("study", "vlms"), ("cli", "study")}


# --------------------------------------------------------------------------- our tree
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_the_known_dependencies(graph):
    # guards against a reader that finds nothing (and so passes everything)
    edges = package_edges(graph)
    for edge in [("vlms", "actstore"), ("probes", "actstore"), ("interventions", "vlms"),
                 ("study", "interventions"), ("organisms", "vlms")]:
        assert edge in edges, edge
    assert "interventions.hooks" in graph and "study.evaluate" in graph


def test_no_import_against_the_data_flow(graph):
    bad = {edge: where for edge, where in package_edges(graph).items()
           if edge[1] not in ALLOWED[edge[0]]}
    assert not bad, "imports against the data flow (DESIGN.md's table): " + "; ".join(
        f"{a} -> {b} ({', '.join(f'{m} imports {t}' for m, t in sorted(w)[:3])})"
        for (a, b), w in sorted(bad.items()))


def test_no_cycle_between_packages(graph):
    pkg_graph: dict[str, set[str]] = {}
    for a, b in package_edges(graph):
        pkg_graph.setdefault(a, set()).add(b)
    assert cycles(pkg_graph) == []


def test_no_cycle_between_modules(graph):
    assert cycles(graph) == []


def test_no_import_of_a_private_name_of_another_package(graph):
    """Packages share through public names (``probes.outputs.write_outputs``, not
    ``probes.commands._write_outputs``)."""
    mods = _modules()
    bad = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                if _package(node.module) in ALLOWED and _package(node.module) != _package(mod):
                    bad += [f"{mod}: from {node.module} import {a.name}" for a in node.names
                            if a.name.startswith("_")]
    assert not bad, bad
