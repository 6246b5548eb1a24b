"""The package's modules import one another without a circle (docs/architecture.md: a lower module never
imports a higher one). Every import statement counts, also those inside functions and ``__main__`` blocks."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

from divscale import paths

PACKAGE = paths.ROOT / "divscale"


def _target(node: ast.ImportFrom, module: str) -> list[str]:
    """The divscale modules that ``from ... import ...`` in ``module`` (dotted, in the package) reads."""
    if node.level:                                           # relative: from . / from .x / from .. (none here)
        base = module.split(".")[: -node.level]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    if prefix != "divscale" and not prefix.startswith("divscale."):
        return []
    if node.module and (node.level or prefix != "divscale"):
        return [prefix]
    return [f"{prefix}.{alias.name}" for alias in node.names]   # from . import paths -> divscale.paths


def import_graph(package: Path = PACKAGE) -> nx.DiGraph:
    """Edges module -> divscale module it imports, for every ``divscale/*.py``."""
    modules = {f"divscale.{p.stem}": p for p in sorted(package.glob("*.py")) if p.stem != "__init__"}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("divscale.")]
            elif isinstance(node, ast.ImportFrom):
                targets = _target(node, name)
            else:
                continue
            graph.add_edges_from((name, t) for t in targets if t in modules and t != name)
    return graph


def test_the_graph_sees_relative_absolute_and_local_imports(tmp_path):
    """The parser itself: a planted circle through each import form is found (so the real test can fail)."""
    pkg = tmp_path / "divscale"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from divscale import c\n")
    (pkg / "c.py").write_text("import divscale.a\n")
    (pkg / "d.py").write_text("from . import io as _io\nif __name__ == '__main__':\n    from .a import f\n")
    (pkg / "io.py").write_text("import json\n")
    graph = import_graph(pkg)
    assert set(graph.edges) == {("divscale.a", "divscale.b"), ("divscale.b", "divscale.c"),
                                ("divscale.c", "divscale.a"), ("divscale.d", "divscale.io"),
                                ("divscale.d", "divscale.a")}
    assert [sorted(c) for c in nx.simple_cycles(graph)] == [["divscale.a", "divscale.b", "divscale.c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert graph.number_of_edges() > 20                       # the parser saw the package's imports
    cycles = sorted(" -> ".join([*c, c[0]]) for c in nx.simple_cycles(graph))
    assert not cycles, "import circle(s) in divscale/ (move the code down, or wire it in the higher module):\n" + \
        "\n".join(cycles)


@pytest.mark.parametrize("low,high", [("data", "grid"), ("train", "pipeline"), ("data", "train"),
                                      ("grid", "pipeline"), ("config", "data")])
def test_a_lower_module_never_imports_a_higher_one(low, high):
    graph = import_graph()
    assert not nx.has_path(graph, f"divscale.{low}", f"divscale.{high}"), (low, high)
