"""Import layering: a lower module never imports a higher one — not under TYPE_CHECKING, not inside a
function — and the project's modules import each other without cycles (issue 27)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vital_core", "index_builder", "training", "server")
LOWER_HIGHER = [
    ("index_builder.faiss_index", "index_builder.index_build"),  # the index vs building it from a corpus
    ("server.explain", "server.service"),  # the /explain pipeline vs the serving state that holds it
]
"""(lower, higher) pairs that once imported each other both ways."""


def project_modules(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages (a package is its __init__)."""
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that `name` imports anywhere in its file: top level, TYPE_CHECKING blocks,
    function bodies, relative imports, and `importlib.import_module("...")` with a literal name."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(resolve(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import module` imports the module; `from module import name` the module itself
            found.update(resolve(f"{base}.{a.name}") for a in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(resolve(node.args[0].value))
    found.discard(None)
    found.discard(name)
    return found  # type: ignore[return-value]


def import_cycle(modules: dict[str, Path]) -> list[str] | None:
    """One import cycle among the modules (package __init__ files left out: they re-export their own
    submodules lazily), or None."""
    packages = {m for m, f in modules.items() if f.name == "__init__.py"}
    graph = {m: imported_modules(m, f, modules) - packages for m, f in modules.items() if m not in packages}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


@pytest.mark.parametrize(("lower", "higher"), LOWER_HIGHER)
def test_lower_module_never_imports_the_higher_one(lower, higher):
    modules = project_modules()
    assert higher in modules
    assert higher not in imported_modules(lower, modules[lower], modules), f"{lower} imports {higher}"
    assert lower in imported_modules(higher, modules[higher], modules)  # the one allowed direction


def test_no_import_cycles_between_modules():
    assert import_cycle(project_modules()) is None, " -> ".join(import_cycle(project_modules()) or [])


def test_the_scanner_sees_every_kind_of_import(tmp_path):
    """The checks above could fail: hidden imports of each kind are found, and so is a cycle."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import importlib\nimportlib.import_module('pkg.low')\n")
    (pkg / "low.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.high import Thing\n"
        "def f():\n    from . import mid\n    import pkg.other.deep\n"
    )
    (pkg / "high.py").write_text("from pkg import low\n")
    (pkg / "mid.py").write_text("x = 1\n")
    (pkg / "other").mkdir()
    (pkg / "other" / "__init__.py").write_text("")
    (pkg / "other" / "deep.py").write_text("from ..mid import x\n")
    modules = project_modules(tmp_path, ("pkg",))
    assert imported_modules("pkg.low", modules["pkg.low"], modules) == {
        "pkg.high",
        "pkg.mid",
        "pkg.other.deep",
    }
    assert imported_modules("pkg.other.deep", modules["pkg.other.deep"], modules) == {"pkg.mid"}
    assert imported_modules("pkg", modules["pkg"], modules) == {"pkg.low"}
    assert import_cycle(modules) == ["pkg.high", "pkg.low", "pkg.high"]
    (pkg / "low.py").write_text("def f():\n    from . import mid\n")
    assert import_cycle(modules) is None
