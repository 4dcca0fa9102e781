"""The command-line reference page, written from each command's own ``--help``.

``python docs/gen_cli.py`` prints the page; ``python docs/gen_cli.py out.md`` writes it. The
documentation build (``docs/hooks.py``) calls :func:`cli_page` so the page always matches the code.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINER = ("fit", "validate", "test", "predict")
PROG = "python -m synthrel_lightning"


def commands() -> list[str]:
    """Every subcommand: the trainer subcommands, then the tools in ``synthrel_lightning.cli.TOOLS``."""
    from synthrel_lightning.cli import TOOLS

    return [*TRAINER, *TOOLS]


def help_text(command: str) -> str:
    """What ``python -m synthrel_lightning <command> --help`` prints (100 columns wide)."""
    from synthrel_lightning import cli

    out, err = io.StringIO(), io.StringIO()
    argv, columns = sys.argv, os.environ.get("COLUMNS")
    sys.argv, os.environ["COLUMNS"] = [PROG], "100"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main([command, "--help"])
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise RuntimeError(f"{command} --help exited with {stop.code}: {err.getvalue()}") from None
    finally:
        sys.argv = argv
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    text = out.getvalue().replace(str(REPO) + os.sep, "")
    if not text.strip():
        raise RuntimeError(f"{command} --help printed nothing")
    return text.rstrip() + "\n"


def cli_page() -> str:
    """The Markdown page: the top-level usage, then one section per subcommand with its ``--help``."""
    from synthrel_lightning import cli

    parts = [
        "# Command line",
        "",
        "Generated from the code when the documentation is built: each section is what "
        f"`{PROG} <command> --help` prints. `demo` takes the options of `fit` (it runs `fit` on the packaged "
        "demo configuration, `--config demo`).",
        "",
        f"## `{PROG}`",
        "",
        "```text",
        cli._usage().rstrip(),
        "```",
    ]
    for command in commands():
        parts += ["", f"## `{command}`", "", "```text", help_text(command).rstrip(), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    page = cli_page()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
