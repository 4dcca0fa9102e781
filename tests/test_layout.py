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


# ------------------------------------------------------------------------------------------- the house
# Every room (a sub-package, or a module at the package's top) stands on one floor. A room imports
# rooms on its own floor or below, never one above (function-level imports count), no two rooms
# import each other through any path, and no modules of one room import each other in a circle.
FLOORS: tuple[tuple[str, ...], ...] = (
    # base: the package itself, carrier types and plumbing every floor uses
    (
        "synthrel_lightning",
        "_lazy",
        "atomic",
        "checkpoints",
        "devices",
        "evaluation_result",
        "figures",
        "labels",
        "module_spec",
        "packaged",
        "paths",
        "png_check",
        "predict_loop",
        "ranks",
        "runs",
        "seeding",
    ),
    # building blocks: synthesis of outliers, OOD scores, loss terms, metric math
    ("synthesis", "scores", "losses", "metrics"),
    # datasets, transforms, DataModules, QC tables and filtered views
    ("data",),
    # methods over data: calibration, correlation statistics, generators, submission export
    ("calibration", "correlation", "generators", "export"),
    # what the model installs or inherits: Lightning callbacks, the Hub's save/load mixin
    ("callbacks", "hub"),
    # the OOD segmenter LightningModule
    ("models",),
    # applications over models: quality control, studies, sharing sets, deployment
    ("qc", "study", "sharing", "deploy", "sweeps"),
    # the command line and test helpers
    ("commands", "cli", "trainer_cli", "__main__", "testing"),
)
MAX_MODULE_LINES = 450


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _floor_of() -> dict[str, int]:
    return {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_room_stands_on_one_floor() -> None:
    rooms = {_room(m) for m in _graph(everywhere=True)}
    floors = [room for level in FLOORS for room in level]
    placed = _floor_of()
    assert len(floors) == len(set(floors)), "a room is on two floors"
    missing = sorted(rooms - set(placed))
    assert not missing, f"rooms on no floor of the house: {missing}; add each to FLOORS in tests/test_layout.py"


def test_no_import_runs_back_up_a_floor() -> None:
    floor = _floor_of()
    offenders = [
        f"{name} (floor {floor[_room(name)]}) imports {dep} (floor {floor[_room(dep)]})"
        for name, deps in sorted(_graph(everywhere=True).items())
        for dep in sorted(deps)
        if _room(name) in floor and _room(dep) in floor and floor[_room(dep)] > floor[_room(name)]
    ]
    assert not offenders, "imports that run back up:\n" + "\n".join(offenders)


def test_no_circle_between_rooms() -> None:
    rooms: dict[str, set[str]] = {}
    for name, deps in _graph(everywhere=True).items():
        rooms.setdefault(_room(name), set()).update(_room(d) for d in deps if _room(d) != _room(name))
    assert not _cycles(rooms), f"rooms that import each other: {_cycles(rooms)}"


def test_no_circle_inside_a_room() -> None:
    graph = _graph(everywhere=True)
    inside = {name: {d for d in deps if _room(d) == _room(name)} for name, deps in graph.items()}
    # a package's __init__ re-exporting its modules is not a circle of its modules
    inside = {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in inside.items()}
    circles = _cycles(inside)
    assert not circles, "modules of one room that import each other in a circle: " + "; ".join(
        " <-> ".join(c) for c in circles
    )


def test_the_house_checks_catch_an_arrow_back_up_and_a_circle() -> None:
    graph = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": set()}
    assert _cycles(graph) == [["a.x", "a.y", "a.z"]]
    assert _cycles({"a.x": {"a.y"}, "a.y": set()}) == []
    floor = _floor_of()
    assert floor["models"] > floor["callbacks"] > floor["data"] > floor["metrics"] > floor["evaluation_result"]


# Modules still over the limit, each awaiting its split: none may grow, and one back under the
# limit must leave this list.
AWAITING_SPLIT: dict[str, int] = {}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_the_line_limit(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    rel = path.relative_to(PACKAGE).as_posix()
    if rel in AWAITING_SPLIT:
        assert lines > MAX_MODULE_LINES, f"{rel} has {lines} lines: remove it from AWAITING_SPLIT"
        assert lines <= AWAITING_SPLIT[rel], f"{rel} grew to {lines} lines (was {AWAITING_SPLIT[rel]}): split it"
    else:
        assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)} has {lines} lines (at most {MAX_MODULE_LINES})"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_says_what_it_holds(path: Path) -> None:
    if path.name == "__init__.py" and not path.read_text(encoding="utf-8").strip():
        return
    assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{path.relative_to(REPO)}: no docstring"
