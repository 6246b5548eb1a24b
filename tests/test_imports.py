"""The package's modules import one another without a circle (docs/architecture.md: a lower module never
imports a higher one). Every import statement counts, also those inside functions and ``__main__`` blocks."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

from divscale import paths

PACKAGE = paths.ROOT / "divscale"


def _target(node: ast.ImportFrom, module: str) -> list[str]:
    """The divscale modules that ``from ... import ...`` in ``module`` (dotted, in the package) reads."""
    if node.level:                                           # relative: from . / from .x / from ..
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
    """Edges module -> divscale module it imports, for every ``divscale/**/*.py`` (a package's ``__init__`` is the
    package itself)."""
    def dotted(path: Path) -> str:
        parts = path.relative_to(package.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {dotted(p): p for p in sorted(package.rglob("*.py"))}
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


# The layers, lowest first: a module imports only from its own layer or lower ones (the cli, at the top, wires
# them). ``__init__`` files of the sub-packages hold docstrings only.
LAYERS = [
    ("divscale", "divscale.paths", "divscale.io", "divscale.config", "divscale.provenance", "divscale.signals"),
    ("divscale.data",),
    ("divscale.models",),
    ("divscale.metrics", "divscale.reward"),
    ("divscale.train",),
    ("divscale.report",),
    ("divscale.tools",),
    ("divscale.study",),
    ("divscale.cli",),
]


def layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or (p != "divscale" and module.startswith(p + ".")) for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_imports.py::LAYERS")


def test_a_lower_layer_never_imports_a_higher_one():
    graph = import_graph()
    upward = sorted(f"{a} -> {b}" for a, b in graph.edges if layer(b) > layer(a))
    assert not upward, "a lower module imports a higher one (move the code down, or wire it in the higher " \
        "module):\n" + "\n".join(upward)


def private_imports(package: Path = PACKAGE) -> list[str]:
    """``from divscale.x import _name`` (or ``module._name``) in a module other than x: a private name used
    across modules."""
    found = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = ".".join(_target(node, module)[0].split(".")) if _target(node, module) else ""
                for a in node.names:
                    if source and a.name.startswith("_") and not a.name.startswith("__") and source != module:
                        found.append(f"{module}: from {source} import {a.name}")
                    if source:
                        aliases[a.asname or a.name] = f"{source}.{a.name}" if node.module is None or \
                            source == "divscale" or not node.module else source
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.attr.startswith("_") and not node.attr.startswith("__"):
                target = aliases.get(node.value.id, "")
                if target.startswith("divscale") and target != module:
                    found.append(f"{module}: {node.value.id}.{node.attr}")
    return found


def test_private_imports_are_found(tmp_path):
    pkg = tmp_path / "divscale"
    pkg.mkdir()
    (pkg / "a.py").write_text("def _f():\n    pass\n")
    (pkg / "b.py").write_text("from divscale.a import _f\nfrom divscale import a\na._f()\n")
    assert private_imports(pkg) == ["divscale.b: from divscale.a import _f", "divscale.b: a._f"]


def test_no_module_imports_another_modules_private_name():
    assert not private_imports(), "\n".join(private_imports())
