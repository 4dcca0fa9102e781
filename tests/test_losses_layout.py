"""The losses package imports one way: no module imports, even lazily or for typing, one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import synthrel_lightning.losses as losses

PACKAGE = "synthrel_lightning.losses"


def package_imports() -> dict[str, set[str]]:
    """Modules of the package each module imports anywhere in its source (module-level, lazy or TYPE_CHECKING)."""
    folder = Path(losses.__file__).parent
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((folder / f"{name}.py").read_text())
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE + "."):
                deps.add(node.module.removeprefix(PACKAGE + ".").split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
                deps.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.Import):
                deps.update(
                    a.name.removeprefix(PACKAGE + ".").split(".")[0]
                    for a in node.names
                    if a.name.startswith(PACKAGE + ".")
                )
        graph[name] = deps - {name}
    return graph


def test_loss_modules_import_each_other_one_way() -> None:
    graph = package_imports()
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join([*path, node])}"
        state[node] = "open"
        for dep in sorted(graph[node]):
            visit(dep, [*path, node])
        state[node] = "done"
        order.append(node)

    for node in sorted(graph):
        visit(node, [])
    # The leaves and the layering the package docstring describes.
    assert {"base", "stats", "checks", "objective"} <= set(graph)
    assert graph["checks"] == set()
    assert graph["stats"] == {"checks"}
    assert "stats" in graph["base"] and "objective" not in graph["base"]
    assert not any("objective" in deps for deps in graph.values())
