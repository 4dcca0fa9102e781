"""Build-time additions to the documentation (an mkdocs hook, ``hooks:`` in mkdocs.yml).

* Pages under ``docs/guides/`` and ``docs/concepts/`` that the hand-written ``nav`` does not list are
  appended to its "Guides" and "Concepts" sections, so a new page needs no edit of mkdocs.yml.
* ``reference/cli.md`` is generated from every command's ``--help`` (``docs/gen_cli.py``).
* ``reference/api/<name>.md`` is generated for every subpackage of ``synthrel_lightning`` (and one page,
  ``core``, for the top-level modules): mkdocstrings ``:::`` directives over each public module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
PACKAGE = REPO / "synthrel_lightning"
AUTO_SECTIONS = {"Guides": "guides", "Concepts": "concepts"}


def _nav_paths(nav: Any) -> set[str]:
    """Every file path named in a (nested) nav."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_nav_paths(v) for v in nav.values())) if nav else set()
    if isinstance(nav, list):
        return set().union(*(_nav_paths(v) for v in nav)) if nav else set()
    return set()


def _section(nav: list[Any], title: str) -> list[Any]:
    for item in nav:
        if isinstance(item, dict) and title in item:
            return item[title]
    entries: list[Any] = []
    nav.append({title: entries})
    return entries


def _public_modules(folder: Path) -> list[str]:
    """Dotted names of the public modules under ``folder`` (a package), package first, depth-first."""
    base = _dotted(folder / "__init__.py")
    names = [base]
    for path in sorted(folder.iterdir()):
        if path.name.startswith("_"):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            names += _public_modules(path)
        elif path.suffix == ".py":
            names.append(_dotted(path))
    return names


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def subpackages() -> list[str]:
    """The subpackages of ``synthrel_lightning`` (folders with an ``__init__.py``), by name."""
    return sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py") if not p.parent.name.startswith("_"))


def api_pages() -> dict[str, str]:
    """``reference/api/<name>.md`` -> page text, one per subpackage plus ``core`` for the top-level modules."""
    pages: dict[str, str] = {}
    for name in subpackages():
        modules = _public_modules(PACKAGE / name)
        lines = [f"# `synthrel_lightning.{name}`", "", f"::: {modules[0]}", "    options:", "      members: false", ""]
        lines += [f"::: {m}\n" for m in modules[1:]]
        pages[f"reference/api/{name}.md"] = "\n".join(lines)
    top = [_dotted(p) for p in sorted(PACKAGE.glob("*.py")) if not p.name.startswith("_")]
    lines = ["# Top-level modules", "", "The modules directly under `synthrel_lightning`.", ""]
    lines += [f"::: {m}\n" for m in top]
    pages["reference/api/core.md"] = "\n".join(lines)
    return pages


def _load_gen_cli() -> Any:
    spec = importlib.util.spec_from_file_location("synthrel_docs_gen_cli", DOCS / "gen_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_config(config: Any) -> Any:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    nav = config["nav"]
    listed = _nav_paths(nav)
    for title, folder in AUTO_SECTIONS.items():
        section = _section(nav, title)
        for path in sorted((DOCS / folder).glob("*.md")):
            rel = f"{folder}/{path.name}"
            if rel not in listed:
                section.append(rel)
    reference = _section(nav, "Reference")
    reference.append({"Command line": "reference/cli.md"})
    api = [{"Top-level modules": "reference/api/core.md"}]
    api += [{f"synthrel_lightning.{name}": f"reference/api/{name}.md"} for name in subpackages()]
    reference.append({"API": api})
    return config


def on_files(files: Files, config: Any) -> Files:
    pages = dict(api_pages())
    pages["reference/cli.md"] = _load_gen_cli().cli_page()
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files
