"""The house rules of the package layout: one-way imports, thin commands, an architecture page that matches the tree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "synthrel_lightning"


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, everywhere: bool) -> set[str]:
    """Package modules imported by ``path``: at module level only (what runs at import), or anywhere."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = ast.walk(tree) if everywhere else _top_level(tree.body)
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("synthrel_lightning")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("synthrel_lightning"):
                found.add(mod)
                found |= {f"{mod}.{a.name}" for a in node.names}
    return found


def _top_level(body: list[ast.stmt]) -> list[ast.AST]:
    out: list[ast.AST] = []
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, (ast.If, ast.Try)):
            out.extend(_top_level(node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])))
    return out


def _graph(everywhere: bool) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path, everywhere) if m in files and m != name}
    return graph


def test_no_import_cycle_between_modules_at_import_time() -> None:
    graph = _graph(everywhere=False)
    # packages' __init__ re-exports are edges too; a cycle is a module reaching itself
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                if not all(m == nxt or nxt.startswith(m + ".") or m.startswith(nxt + ".") for m in cycle):
                    pytest.fail("import cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_synthesis_never_imports_data() -> None:
    offenders = [
        f"{name} imports {m}"
        for name, deps in _graph(everywhere=True).items()
        if name.startswith("synthrel_lightning.synthesis")
        for m in deps
        if m.startswith("synthrel_lightning.data")
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("path", sorted((PACKAGE / "commands").glob("*.py")), ids=lambda p: p.stem)
def test_command_modules_are_thin(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= 160, f"{path.name} has {lines} lines: a command module holds only its parsing and main"


def test_architecture_page_table_names_every_subpackage() -> None:
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip() for line in page.splitlines() if line.startswith("| `synthrel_lightning.")}
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    missing = [name for name in subpackages if not any(f"`synthrel_lightning.{name}`" in row for row in rows)]
    assert not missing, f"the package table of docs/architecture.md has no row for {missing}"
