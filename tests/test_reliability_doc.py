"""The reliability page names only tests that exist, and every fault it lists names what checks it.

``docs/reliability.md`` backs each claim with ``tests/<file>::<test>`` (``<file>::<test>`` and the
shorthand ``::<test>``, continuing the file named last, are accepted too). Each reference must name a
file under ``tests/`` that defines that test function (read with :mod:`ast`, so a name in a comment or a
string does not count); a parametrized id ``test_x[case]`` names ``test_x``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "reliability.md"
FAULTS_HEADING = "## Faults found by trying it, and what happens now"

# `tests/test_x.py::test_y`, `test_x.py::test_y`, `::test_y` (the file named last), `test_x.py` alone
REFERENCE = re.compile(r"`(?:tests/)?(test_\w+\.py)?(?:::(test_\w+)(?:\[[^\]`]*\])?)?`")
BENCHMARK = re.compile(r"`(benchmarks/[\w./-]+\.py)`")


def references(text: str) -> list[tuple[str | None, str | None]]:
    """(file, test) of every reference in ``text``, in order; a shorthand takes the file named last (None if none)."""
    out: list[tuple[str | None, str | None]] = []
    current: str | None = None
    for match in REFERENCE.finditer(text):
        file, test = match.group(1), match.group(2)
        if file is None and test is None:
            continue  # "``" or a code span that is no reference
        current = file or current
        out.append((current, test))
    return out


def defined_tests(source: str) -> set[str]:
    """Names of the test functions a test file defines: at module level or as methods of its classes."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return {n for n in names if n.startswith("test")}


def problems(text: str, tests_dir: Path) -> list[str]:
    """What is wrong with the references of ``text``: a shorthand without a file, a missing file or test."""
    found: list[str] = []
    cache: dict[str, set[str]] = {}
    for file, test in references(text):
        if file is None:
            found.append(f"::{test} names no file before it")
            continue
        path = tests_dir / file
        if not path.is_file():
            found.append(f"tests/{file} does not exist")
            continue
        if test is not None:
            if file not in cache:
                cache[file] = defined_tests(path.read_text(encoding="utf-8"))
            if test not in cache[file]:
                found.append(f"tests/{file}::{test} is not defined")
    return found


def fault_entries(text: str) -> list[str]:
    """The list entries (``- ...`` with their continuation lines) of the faults section."""
    start = text.index(FAULTS_HEADING)
    following = text.find("\n## ", start + len(FAULTS_HEADING))
    section = text[start : following if following >= 0 else len(text)]
    entries: list[str] = []
    for line in section.splitlines():
        if line.startswith("- "):
            entries.append(line)
        elif entries and line.startswith("  ") and line.strip():
            entries[-1] += "\n" + line
    return entries


def test_every_test_the_page_names_exists() -> None:
    text = PAGE.read_text(encoding="utf-8")
    refs = references(text)
    assert sum(test is not None for _, test in refs) >= 60, f"only {len(refs)} references found: the parser broke?"
    assert not problems(text, REPO / "tests")
    for script in BENCHMARK.findall(text):
        assert (REPO / script).is_file(), script


def test_every_fault_entry_says_then_and_now_and_names_its_check() -> None:
    entries = fault_entries(PAGE.read_text(encoding="utf-8"))
    assert len(entries) >= 30, len(entries)
    for entry in entries:
        title = entry.splitlines()[0]
        assert "Then:" in entry and "Now:" in entry, title
        named_test = any(test is not None for _, test in references(entry))
        assert named_test or BENCHMARK.search(entry), f"{title}: names no test and no benchmark"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("`tests/test_reliability_doc.py::test_every_test_the_page_names_exists`", []),
        ("`test_reliability_doc.py::defined_tests`", []),  # not a test name: no reference at all
        ("`tests/test_no_such_file.py::test_x`", ["does not exist"]),
        ("`::test_every_test_the_page_names_exists`", ["names no file"]),
        # the shorthand continues the file named last; a parametrized id names its function
        ("`tests/test_reliability_doc.py::test_x` `::test_the_checker_finds_what_is_wrong[a]`", ["not defined"]),
        ("`tests/test_cli.py` `::test_unknown_subcommand_is_reported`", []),
        ("`tests/test_cli.py` `::test_reliability_doc`", ["not defined"]),
        # a name that appears only in a string of the file is not a test it defines
        ("`tests/test_reliability_doc.py::test_nothing_of_the_kind`", ["not defined"]),
    ],
)
def test_the_checker_finds_what_is_wrong(text: str, expected: list[str]) -> None:
    found = problems(text, REPO / "tests")
    assert len(found) == len(expected), found
    for message, part in zip(found, expected):
        assert part in message, message
