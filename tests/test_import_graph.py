"""The package structure, computed from the source with ``ast`` (every import: module level,
function-local and ``TYPE_CHECKING`` ones):

- no cycle between packages (``buildkitpy.X`` for each package or top-level module X, with
  ``solver/`` as ``buildkitpy.solver`` and ``frontend/`` as ``buildkitpy.frontend``);
- no core package imports the Dockerfile frontend: only the daemon (which registers it) and the
  Docker Engine API (whose classic builder runs it step by step) may.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parent.parent
SOURCES = {"buildkitpy": REPO / "buildkitpy", "buildkitpy.solver": REPO / "solver",
           "buildkitpy.frontend": REPO / "frontend"}
FRONTEND = "buildkitpy.frontend"
MAY_IMPORT_FRONTEND = {"buildkitpy.daemon", "buildkitpy.dockerapi"}

Site = tuple[str, int, str]  # importing module, line, imported module
Edges = dict[tuple[str, str], list[Site]]


def modules(sources: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name → file, generated code (``buildkitpy/api``) left out."""
    out: dict[str, Path] = {}
    for prefix, root in sources.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([prefix, *parts])
            if name == "buildkitpy.api" or name.startswith("buildkitpy.api."):
                continue
            out[name] = path
    return out


def unit(module: str) -> str:
    """The package a module belongs to: ``buildkitpy.solver.ops.exec`` → ``buildkitpy.solver``."""
    return ".".join(module.split(".")[:2])


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported project module) for every import statement anywhere in ``path``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        for name in names:
            if name == "buildkitpy" or name.startswith("buildkitpy."):
                resolved = _resolve(name, known)
                if resolved and resolved != "buildkitpy":
                    out.append((node.lineno, resolved))
    return list(dict.fromkeys(out))


def package_edges(sources: dict[str, Path]) -> Edges:
    known = modules(sources)
    edges: Edges = defaultdict(list)
    for module, path in known.items():
        for line, target in imports(module, path, known):
            if unit(target) != unit(module):
                edges[(unit(module), unit(target))].append((module, line, target))
    return edges


def cycles(edges: Edges) -> list[str]:
    graph = nx.DiGraph(list(edges))
    out = []
    for component in nx.strongly_connected_components(graph):
        if len(component) < 2:
            continue
        sub = graph.subgraph(component)
        lines = [f"{a} -> {b} ({edges[(a, b)][0][0]}:{edges[(a, b)][0][1]} imports {edges[(a, b)][0][2]})"
                 for a, b in sorted(sub.edges)]
        out.append("cycle among " + ", ".join(sorted(component)) + ":\n  " + "\n  ".join(lines))
    return out


def frontend_importers(edges: Edges) -> list[str]:
    return [f"{module}:{line} imports {target}"
            for (a, b), sites in sorted(edges.items()) if b == FRONTEND and a not in MAY_IMPORT_FRONTEND
            for module, line, target in sites]


def test_no_cycle_between_packages():
    edges = package_edges(SOURCES)
    assert len(edges) > 50, "the graph is empty: the source layout changed under this test"
    assert cycles(edges) == []


def test_no_core_package_imports_the_frontend():
    edges = package_edges(SOURCES)
    assert ("buildkitpy.daemon", FRONTEND) in edges  # the analysis sees the function-local import
    assert frontend_importers(edges) == []


def test_the_analysis_finds_what_it_forbids(tmp_path: Path):
    """A planted cycle (through a function-local and a relative import) and a core import of the
    frontend are reported."""
    pkg, frontend = tmp_path / "buildkitpy", tmp_path / "frontend"
    (pkg / "solver").mkdir(parents=True)
    (frontend / "dockerfile").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "solver" / "__init__.py").write_text("")
    (pkg / "solver" / "ops.py").write_text("def f():\n    from buildkitpy.frontend.dockerfile import conv\n")
    (pkg / "llb.py").write_text("import buildkitpy.solver.ops\n")
    (frontend / "__init__.py").write_text("")
    (frontend / "dockerfile" / "__init__.py").write_text("")
    (frontend / "dockerfile" / "conv.py").write_text("from buildkitpy import llb\n")
    edges = package_edges({"buildkitpy": pkg, FRONTEND: frontend})
    assert set(edges) == {("buildkitpy.solver", FRONTEND), (FRONTEND, "buildkitpy.llb"),
                          ("buildkitpy.llb", "buildkitpy.solver")}
    assert len(cycles(edges)) == 1
    assert frontend_importers(edges) == [
        "buildkitpy.solver.ops:2 imports buildkitpy.frontend.dockerfile.conv"]
