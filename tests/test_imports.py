"""The package's import structure, read from the source with ``ast`` (nothing is executed).

Intra-package imports (``from .x import …``, ``from pnorm.x import …``, ``import pnorm.x``) must
form no cycle, must all sit at module level (none inside a function or class body), and must not
import a private ``_name`` from another module. Each check is also run on a small made-up
package that breaks it, so a check that can never fail would be noticed.
"""

from __future__ import annotations

import ast
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import pnorm

PKG_DIR = Path(pnorm.__file__).resolve().parent
PKG = "pnorm"


@dataclass(frozen=True)
class Import:
    """One intra-package import statement: who imports what from which module, and where."""

    module: str  # the importing module's stem ("training"; the package itself is "__init__")
    target: str  # the imported module's stem
    names: tuple[str, ...]  # the names imported from it (empty for ``import pnorm.x``)
    line: int
    nested: bool  # inside a function or class body


def _resolve(node: ast.ImportFrom, modules: set[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(target module, names) of a ``from … import …`` inside the package, else []."""
    if node.level > 1:
        raise ValueError(f"line {node.lineno}: imports above the package are not expected")
    if node.level == 1:
        base = node.module
    elif node.module == PKG or (node.module or "").startswith(PKG + "."):
        base = node.module[len(PKG) + 1:] or None
    else:
        return []  # another package
    names = tuple(alias.name for alias in node.names)
    if base is not None:
        return [(base.split(".")[0], names)]
    # ``from . import x`` / ``from pnorm import x``: a submodule, or a name of the package itself
    subs = [n for n in names if n in modules]
    rest = tuple(n for n in names if n not in modules)
    return [(n, ()) for n in subs] + ([("__init__", rest)] if rest else [])


def package_imports(sources: dict[str, str]) -> list[Import]:
    """Every intra-package import of a package given as {module stem: source}."""
    modules = set(sources)
    found: list[Import] = []
    for module, source in sources.items():
        tree = ast.parse(source, filename=f"{module}.py")

        def visit(node: ast.AST, nested: bool, module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ImportFrom):
                    for target, names in _resolve(child, modules):
                        found.append(Import(module, target, names, child.lineno, nested))
                elif isinstance(child, ast.Import):
                    for alias in child.names:
                        if alias.name == PKG or alias.name.startswith(PKG + "."):
                            target = alias.name[len(PKG) + 1:].split(".")[0] or "__init__"
                            found.append(Import(module, target, (), child.lineno, nested))
                inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                           ast.Lambda))
                visit(child, nested or inner)

        visit(tree, False)
    return found


def import_graph(imports: list[Import]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (self-imports included, so they show up)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.module, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle ``[a, b, …, a]`` per strongly connected component that has one.

    Tarjan's algorithm finds the components; within each, a breadth-first search from its
    smallest module back to itself gives a shortest cycle to report.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        start = min(component)
        if len(component) == 1 and start not in graph.get(start, ()):
            continue  # a single module that does not import itself
        parent: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in parent:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w not in parent:
                        parent[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        while len(path) == 1 or path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append(path[::-1])
    return sorted(cycles)


def nested_imports(imports: list[Import]) -> list[str]:
    """Package imports inside a function or class body, as "module.py:line imports target"."""
    return [f"{i.module}.py:{i.line} imports {i.target}" for i in imports if i.nested]


def private_imports(imports: list[Import]) -> list[str]:
    """Names starting with "_" imported from another package module."""
    return [f"{i.module}.py:{i.line} imports {name} from {i.target}"
            for i in imports for name in i.names
            if name.startswith("_") and i.target != i.module]


def missing_exports(module: types.ModuleType) -> list[str]:
    """Names in ``module.__all__`` that the module does not define."""
    return [name for name in module.__all__ if not hasattr(module, name)]


def _sources() -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(PKG_DIR.glob("*.py"))}


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = package_imports(_sources())
    assert len({i.module for i in found}) > 20  # the parser does see the package's imports
    return found


# ------------------------------------------------------------------ the package


def test_the_package_has_no_import_cycle(imports):
    cycles = find_cycles(import_graph(imports))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_package_import_inside_a_function_or_class(imports):
    assert not nested_imports(imports)


def test_no_private_name_is_imported_from_another_module(imports):
    assert not private_imports(imports)


def test_every_public_name_exists():
    assert not missing_exports(pnorm)
    assert len(set(pnorm.__all__)) == len(pnorm.__all__)  # no name listed twice


# ------------------------------------------------------------------ the checks themselves


BAD_PACKAGE = {
    "__init__": "from .a import A\n",
    "a": "from .b import B\nA = 1\n",
    "b": "import pnorm.c\nB = 2\n",
    "c": "from pnorm.a import A\nfrom ._x import _hidden\n",  # a -> b -> c -> a
    "_x": "_hidden = 3\n",
    "d": ("import os\n"
          "def late():\n"
          "    from .a import _secret\n"
          "    return _secret\n"
          "class Holder:\n"
          "    from pnorm import b\n"),
    "e": "from . import e\n",  # imports itself
    "f": "from pnorm import A\nfrom collections import OrderedDict\n",  # from the package itself
}


def test_the_parser_resolves_every_import_form():
    found = package_imports(BAD_PACKAGE)
    edges = {(i.module, i.target) for i in found}
    assert edges == {("__init__", "a"), ("a", "b"), ("b", "c"), ("c", "a"), ("c", "_x"),
                     ("d", "a"), ("d", "b"), ("e", "e"), ("f", "__init__")}
    assert not any(i.target in ("os", "collections") for i in found)  # other packages skipped


def test_the_cycle_check_fails_on_a_cycle_and_reports_it():
    cycles = find_cycles(import_graph(package_imports(BAD_PACKAGE)))
    assert ["a", "b", "c", "a"] in cycles and ["e", "e"] in cycles
    assert len(cycles) == 2
    assert find_cycles({"x": {"y"}, "y": {"z"}, "z": set()}) == []  # a chain is fine
    assert find_cycles({"p": {"q"}, "q": {"r", "p"}, "r": {"q"}}) == [["p", "q", "p"]]  # shortest


def test_the_nested_import_check_fails_in_functions_and_classes():
    assert nested_imports(package_imports(BAD_PACKAGE)) == [
        "d.py:3 imports a", "d.py:6 imports b"]


def test_the_private_name_check_fails_on_underscore_names():
    assert private_imports(package_imports(BAD_PACKAGE)) == [
        "c.py:2 imports _hidden from _x", "d.py:3 imports _secret from a"]


def test_the_export_check_fails_on_a_missing_name():
    module = types.ModuleType("fake")
    module.present = 1
    module.__all__ = ["present", "absent"]
    assert missing_exports(module) == ["absent"]
