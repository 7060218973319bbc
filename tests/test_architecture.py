"""docs/ARCHITECTURE.md stays true: its import table is the code's, and no import points upwards."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGES = ("pipeline", "flows")
# Lowest first: a module may import its own layer and the layers before it.
LAYERS = ("core", "ports", "loops", "edges", "wiring", "app")


def documented() -> dict[str, tuple[str, set[str]]]:
    """``module path -> (layer, imports)`` from the table between the doc's markers."""
    table = DOC.read_text().split("<!-- imports:start -->")[1].split("<!-- imports:end -->")[0]
    rows = {}
    for line in table.splitlines()[3:]:
        path, layer, imports = (cell.strip() for cell in line.strip().strip("|").split("|"))
        rows[path] = (layer, {name.strip() for name in imports.split(",") if name.strip()})
    return rows


def package_names(package: str) -> set[str]:
    """What a package's __init__.py defines (pipeline's errors and exit codes, flows' log-level
    check): names, not modules."""
    body = ast.parse((ROOT / package / "__init__.py").read_text()).body
    defined = {node.name for node in body if isinstance(node, ast.ClassDef | ast.FunctionDef)}
    constants = {
        target.id
        for node in body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    return {f"{package}.{name}" for name in defined | constants}


PACKAGE_NAMES = set().union(*(package_names(package) for package in PACKAGES))


def imported(path: Path) -> set[str]:
    """Rollcast modules ``path`` imports, named relative to its own package."""
    package = path.parent.name
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module in PACKAGES:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    modules = {name for name in found if name.split(".")[0] in PACKAGES and "." in name}
    modules -= PACKAGE_NAMES  # the error classes and exit codes every layer shares
    return {name.removeprefix(f"{package}.") for name in modules}


def code_modules() -> list[Path]:
    return sorted(
        path
        for package in PACKAGES
        for path in (ROOT / package).glob("*.py")
        if path.name != "__init__.py"
    )


def test_every_module_is_in_the_table() -> None:
    paths = {str(path.relative_to(ROOT)) for path in code_modules()}

    assert set(documented()) == paths


@pytest.mark.parametrize("path", code_modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_table_lists_what_each_module_imports(path: Path) -> None:
    _, imports = documented()[str(path.relative_to(ROOT))]

    assert imported(path) == imports


def test_no_import_points_to_a_higher_layer() -> None:
    rows = documented()
    for path, (layer, imports) in rows.items():
        package = path.split("/")[0]
        for name in imports:
            target = name.replace(".", "/") if "." in name else f"{package}/{name}"
            target_layer, _ = rows[f"{target}.py"]
            assert LAYERS.index(target_layer) <= LAYERS.index(layer), f"{path} imports {name}"


def test_the_library_never_imports_the_app() -> None:
    for path in code_modules():
        if path.parent.name == "pipeline":
            text = path.read_text()
            assert not re.search(r"^\s*(from|import) flows\b", text, re.MULTILINE), path


def test_no_module_imports_itself_through_others() -> None:
    """No import circle, lazy imports included: each module can be read after what it needs."""
    graph = {path: set() for path in code_modules()}
    for path in graph:
        for name in imported(path):
            target = name.replace(".", "/") if "." in name else f"{path.parent.name}/{name}"
            graph[path].add(ROOT / f"{target}.py")
    state: dict[Path, str] = {}

    def visit(path: Path, trail: tuple[str, ...]) -> None:
        if state.get(path) == "done":
            return
        here = f"{path.parent.name}/{path.name}"
        assert state.get(path) != "open", " -> ".join((*trail, here))
        state[path] = "open"
        for target in sorted(graph.get(path, ())):
            visit(target, (*trail, here))
        state[path] = "done"

    for path in sorted(graph):
        visit(path, ())
