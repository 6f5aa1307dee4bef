"""The import graph of src/lrkit (imports inside functions included): no cycle, and the
schedules know nothing of torch. The layers themselves are import-linter's contracts in
pyproject.toml (``lint-imports``, run by ``make test``)."""
from __future__ import annotations

import grimp
import pytest


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("lrkit", include_external_packages=True)


def strongly_connected(graph) -> list[set[str]]:
    """Tarjan's components of more than one module (iterative: no recursion limit)."""
    modules = sorted(m for m in graph.modules if m.split(".")[0] == "lrkit")
    edges = {m: sorted(w for w in graph.find_modules_directly_imported_by(m)
                       if w.split(".")[0] == "lrkit") for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            if i < len(edges[v]):
                work.append((v, i + 1))
                w = edges[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return found


def test_the_import_graph_has_no_cycle(graph):
    cycles = strongly_connected(graph)
    assert not cycles, f"modules that import each other (directly or not): {cycles}"


def test_the_cycle_finder_finds_a_cycle():
    g = grimp.ImportGraph()
    for m in ("lrkit", "lrkit.a", "lrkit.b", "lrkit.c"):
        g.add_module(m)
    g.add_import(importer="lrkit.a", imported="lrkit.b")
    g.add_import(importer="lrkit.b", imported="lrkit.c")
    assert strongly_connected(g) == []
    g.add_import(importer="lrkit.c", imported="lrkit.a")
    assert strongly_connected(g) == [{"lrkit.a", "lrkit.b", "lrkit.c"}]


def test_schedules_import_no_torch(graph):
    schedules = [m for m in graph.modules if m.startswith("lrkit.schedules")]
    assert len(schedules) > 5
    for m in schedules:
        imported = graph.find_modules_directly_imported_by(m)
        assert not {w for w in imported if w.split(".")[0] in ("torch", "keras", "jax")}, m
