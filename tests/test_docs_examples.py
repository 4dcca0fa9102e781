"""Every code block of README.md and the documentation site runs, or is checked against the code, in a test.

* ```` ```python ```` blocks are executed, each in a fresh namespace in a temporary working directory, after
  the tiny-size substitutions of :data:`SUBSTITUTIONS` (fewer epochs and frames; each must apply somewhere);
  blocks that train a model are marked slow.
* ```` ```bash ```` blocks: every command line is checked. ``python -m synthrel_lightning <command>`` must name
  a real command and only options that the command's ``--help`` lists; a line whose files all exist in the
  repository and holds no placeholder also parses with ``--print_config`` (the whole configuration is read
  and checked, nothing runs). ``make <target>`` names a Makefile target, ``pip install -e ".[x]"`` an extra
  of pyproject.toml, ``wandb sweep <file>`` and ``python benchmarks/<file>`` existing files.
* A block preceded by ``<!-- no-test: <reason> -->`` is skipped; the skipped blocks must be exactly
  :data:`UNTESTED`, so the list cannot grow unnoticed.
* Files of the repository that the pages name (recipes, callback sets, tests ``file::test``) exist.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted([REPO / "README.md", *DOCS.rglob("*.md")])

UNTESTED: set[tuple[str, str]] = {
    ("docs/concepts/calibration.md", "a fragment: needs a calibrated checkpoint, a model and images"),
    ("docs/guides/calibration_study.md", "a fragment: needs a zoo and the real domain sets"),
    ("docs/guides/calibration_study.md", "a fragment: needs logits of real sets"),
    ("docs/guides/domains.md", "needs a Cityscapes copy under data/cityscapes"),
    ("docs/guides/finetune_study.md", "a fragment: needs the metrics of three fine-tuning runs"),
    ("docs/guides/sharing.md", "needs the hub (network)"),
    ("docs/guides/qc.md", "needs a generated set and hub segmenters"),
}
"""(page, reason) of every block marked ``<!-- no-test: reason -->``."""

SUBSTITUTIONS: dict[str, str] = {
    "trainer = L.Trainer(max_epochs=2)": (
        "trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, "
        "enable_progress_bar=False, enable_model_summary=False)"
    ),
    'SMPSegmenter("DeepLabV3Plus", "resnet50", encoder_weights=None)': (
        'SMPSegmenter("DeepLabV3Plus", "resnet18", encoder_weights=None, num_classes=19)'
    ),
    'root="/data/cityscapes"': (
        'root=__import__("synthrel_lightning.data.demo", fromlist=["x"]).write_demo_cityscapes("cs", 4, 2)'
    ),
    "crop_size=(512, 1024), batch_size=8, seed=0": "crop_size=(64, 128), batch_size=2, seed=0, num_workers=0",
    "data = DemoDataModule(\n": "data = DemoDataModule(num_train=4, num_val=2, batch_size=2, eval_batch_size=2,\n",
    "for epoch in range(10):": "for epoch in range(1):",
}
"""Tiny variants: text of a block -> what the test runs instead."""

MARK = re.compile(r"<!--\s*no-test:\s*(.+?)\s*-->")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
PLACEHOLDER = re.compile(r"[<>$]|\.\.\.")
REPO_FILE = re.compile(r"(?<![\w/.-])((?:recipes|callbacks|benchmarks|tests)/[\w./-]+\.(?:ya?ml|py|md))")
TEST_REF = re.compile(r"(?:tests/)?(test_[\w]+\.py)?::(test_\w+)")
TRAINER = {"demo", "fit", "validate", "test", "predict"}


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    text: str
    mark: str | None

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def _blocks() -> list[Block]:
    found: list[Block] = []
    for path in PAGES:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m or not m.group(2):
                i += 1
                continue
            indent, lang, start = m.group(1), m.group(2), i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            body = "\n".join(line[len(indent) :] for line in lines[start + 1 : j])
            before = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            mark = MARK.search(before)
            rel = str(path.relative_to(REPO))
            found.append(Block(rel, start + 1, lang, body, mark.group(1) if mark else None))
            i = j + 1
    return found


BLOCKS = _blocks()
PYTHON = [b for b in BLOCKS if b.lang == "python" and b.mark is None]
BASH = [b for b in BLOCKS if b.lang in ("bash", "sh", "shell") and b.mark is None]


def _gen_cli() -> Any:
    spec = importlib.util.spec_from_file_location("synthrel_docs_gen_cli", DOCS / "gen_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_HELP: dict[str, set[str]] = {}


def _options(command: str) -> set[str]:
    """The option names (without ``--``) that ``command --help`` lists."""
    if command not in _HELP:
        text = _gen_cli().help_text("fit" if command == "demo" else command)
        _HELP[command] = {m[2:] for m in re.findall(r"--[\w.\-]+", text)}
    return _HELP[command]


def _command_lines(text: str) -> list[list[str]]:
    """Shell command lines of a block: continuations joined, comments dropped, split on ``;``/``&&``/``|``."""
    joined = re.sub(r"\\\n", " ", text)
    out: list[list[str]] = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|"):
                if command and command[0] not in ("do", "done", "for", "then", "fi"):
                    out.append(command)
                command = []
            else:
                command.append(token)
    return out


def _synthrel_lines() -> list[tuple[Block, list[str]]]:
    return [(b, t[3:]) for b in BASH for t in _command_lines(b.text) if t[:3] == ["python", "-m", "synthrel_lightning"]]


def test_the_pages_hold_code_blocks_and_the_untested_ones_are_exactly_the_listed_ones() -> None:
    assert len(PYTHON) >= 3 and len(_synthrel_lines()) >= 20, "the extraction of code blocks found too little"
    marked = {(b.page, b.mark) for b in BLOCKS if b.mark is not None}
    assert marked == UNTESTED, f"blocks marked no-test {sorted(marked)} differ from the listed ones {sorted(UNTESTED)}"


def test_every_substitution_applies_to_a_block() -> None:
    unused = [old for old in SUBSTITUTIONS if not any(old in b.text for b in PYTHON)]
    assert not unused, f"substitutions that match no python block (remove or fix them): {unused}"


def _python_params() -> list[Any]:
    """Blocks that train a model (``.fit(``) take over a minute on a CPU: they run with the slow tests."""
    return [pytest.param(b, marks=pytest.mark.slow) if ".fit(" in b.text else b for b in PYTHON]


@pytest.mark.parametrize("block", _python_params(), ids=str)
def test_python_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = block.text
    for old, new in SUBSTITUTIONS.items():
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    exec(compile(code, f"{block}", "exec"), namespace)


LAUNCHERS: dict[str, int] = {"srun": 0, "conda": 3}
"""Launchers a command line may start with, and how many of their own words follow (``conda run -n env``)."""


def _without_launcher(tokens: list[str]) -> list[str]:
    """The command a line runs: environment assignments, ``srun``/``conda run -n x`` and ``torchrun ... -m`` removed.

    ``torchrun <options> -m synthrel_lightning ...`` is checked as ``python -m synthrel_lightning ...``;
    a path to an executable (``.venv/bin/wandb``) as its name.
    """
    out = list(tokens)
    while out and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", out[0]):
        out = out[1:]
    if out and out[0] in LAUNCHERS:
        out = out[1 + LAUNCHERS[out[0]] :]
        while out and out[0].startswith("-"):
            out = out[1:]
    if out and out[0] == "torchrun" and "-m" in out:
        out = ["python", *out[out.index("-m") :]]
    if out and "/" in out[0] and out[0].split("/")[-1] in ("python", "wandb"):
        out = [out[0].split("/")[-1], *out[1:]]
    return out


@pytest.mark.parametrize("block", BASH, ids=str)
def test_bash_block_names_real_commands_options_and_files(block: Block) -> None:
    from synthrel_lightning.cli import TOOLS

    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    problems: list[str] = []
    for tokens in _command_lines(block.text):
        tokens = _without_launcher(tokens)
        if not tokens:
            continue
        head = tokens[0]
        if tokens[:3] == ["python", "-m", "synthrel_lightning"]:
            if len(tokens) == 3 or tokens[3] in ("--help", "-h"):
                continue
            command = tokens[3]
            if command not in TRAINER and command not in TOOLS and command != "<tool>":
                problems.append(f"unknown command {command!r}")
                continue
            if command == "<tool>":
                continue
            allowed = _options(command) | {"verbose", "help"}
            for token in tokens[4:]:
                if not token.startswith("--"):
                    continue
                name = token[2:].split("=", 1)[0]
                parts = name.split(".")
                if not any(".".join(parts[:k]) in allowed for k in range(1, len(parts) + 1)):
                    problems.append(f"{command}: option --{name} is not in its --help")
        elif head == "make":
            for target in tokens[1:]:
                if not re.search(rf"^{re.escape(target)}:", makefile, re.M):
                    problems.append(f"make target {target!r} is not in the Makefile")
        elif head in ("pip", "python") and tokens[1:3] == ["-m", "pip"] or head == "pip":
            for extra in re.findall(r"\.\[([\w,-]+)\]", " ".join(tokens)):
                for name in extra.split(","):
                    if not re.search(rf"^{re.escape(name)} = \[", pyproject, re.M):
                        problems.append(f"pyproject.toml has no extra {name!r}")
        elif head == "python" and tokens[1].startswith("benchmarks/"):
            if not (REPO / tokens[1]).exists():
                problems.append(f"{tokens[1]} does not exist")
        elif head == "wandb":
            if tokens[1] == "sweep" and not (REPO / tokens[2]).exists():
                problems.append(f"{tokens[2]} does not exist")
        elif head in ("export", "cd", "git", "mkdocs", "source", "sbatch"):
            continue
        else:
            problems.append(f"a command this test does not know how to check: {' '.join(tokens)}")
    assert not problems, f"{block}: " + "; ".join(problems)


def _parsable() -> list[tuple[Block, list[str]]]:
    """Command lines that name only files of the repository and hold no placeholder."""
    out = []
    for block, args in _synthrel_lines():
        if not args or args[0] not in TRAINER | {"generate", "domains", "caption", "correlate", "calibrate", "qc"}:
            continue
        if PLACEHOLDER.search(" ".join(args)) or "--ckpt_path" in " ".join(args):
            continue
        configs = [b for a, b in zip(args, args[1:]) if a in ("--config", "-c")]
        configs += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
        if any(c != "demo" and not (REPO / c).exists() for c in configs):
            continue
        out.append((block, args))
    return out


@pytest.mark.parametrize(("block", "args"), _parsable(), ids=lambda x: str(x) if isinstance(x, Block) else "")
def test_command_line_parses_with_print_config(block: Block, args: list[str], tmp_path: Path) -> None:
    from synthrel_lightning import cli

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["python -m synthrel_lightning"]
    try:
        with contextlib.chdir(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with pytest.raises(SystemExit) as stop:
                cli.main([*args, "--print_config"])
    finally:
        sys.argv = argv
    assert stop.value.code in (0, None), f"{block}: {' '.join(args)} does not parse:\n{err.getvalue()[-2000:]}"
    assert out.getvalue().strip(), f"{block}: {' '.join(args)} printed no configuration"


def test_repository_files_and_tests_named_by_the_pages_exist() -> None:
    missing: list[str] = []
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        for name in set(REPO_FILE.findall(text)):
            if not (REPO / name).exists():
                missing.append(f"{path.relative_to(REPO)}: {name}")
        current: str | None = None
        for file, test in TEST_REF.findall(text):
            current = file or current
            if current is None:
                missing.append(f"{path.relative_to(REPO)}: ::{test} without a file")
                continue
            source = REPO / "tests" / current
            if not source.exists() or not re.search(rf"def {test}\b", source.read_text(encoding="utf-8")):
                missing.append(f"{path.relative_to(REPO)}: tests/{current}::{test}")
    assert not missing, missing
