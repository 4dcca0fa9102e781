"""``python -m synthrel_lightning study``: the paper's whole study, resumable, split into shards if asked.

Options are the parameters of :func:`synthrel_lightning.study.run.run_paper_study`::

    python -m synthrel_lightning study --config recipes/paper_study.yaml
    python -m synthrel_lightning study --config recipes/paper_study.yaml --stage report
    python -m synthrel_lightning study --config recipes/paper_study.yaml --shard 2/8   # one of 8 zoo shards
    python -m synthrel_lightning study --config demo                                   # the demo study on CPU

``--config demo`` names the packaged demo study (``synthrel_lightning/configs/study_demo.yaml``).
Exit status: 0 when everything succeeded, 1 when a stage, model or set failed (the report lists
it), 2 for bad input (the cause on one line).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from synthrel_lightning.commands._parsing import function_parser

DEMO_STUDY = Path(__file__).resolve().parent.parent / "configs" / "study_demo.yaml"
"""The packaged demo study: ``study --config demo`` names it."""


def build_parser() -> Any:
    """The jsonargparse parser of ``study``, built from :func:`run_paper_study`'s signature."""
    from synthrel_lightning.study.run import run_paper_study

    return function_parser(
        "study",
        run_paper_study,
        description="Run the paper's study: sets, qc, zoo evaluation, correlation, calibration, fine-tuning, report.",
        config_help="YAML study configuration (or 'demo' for the packaged demo study)",
        skip={"tool_runner"},
    )


def _resolve_demo(args: list[str]) -> list[str]:
    out = list(args)
    for i, a in enumerate(out):
        if a == "--config=demo" and not Path("demo").exists():
            out[i] = f"--config={DEMO_STUDY}"
        elif a == "demo" and i > 0 and out[i - 1] in ("--config", "-c") and not Path("demo").exists():
            out[i] = str(DEMO_STUDY)
    return out


def _collect_stages(args: list[str]) -> list[str]:
    """``--stage a --stage b`` and ``--stage a,b`` -> one ``--stage=[a,b]`` (jsonargparse wants one list)."""
    out, stages, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a == "--stage" and i + 1 < len(args):
            stages += args[i + 1].split(",")
            i += 2
            continue
        if a.startswith("--stage=") and not a.startswith("--stage=["):
            stages += a.split("=", 1)[1].split(",")
        else:
            out.append(a)
        i += 1
    return [*out, f"--stage=[{','.join(s.strip() for s in stages if s.strip())}]"] if stages else out


def _run_tool_here(command: list[str]) -> None:
    """Run a tool the study calls (``fit``, ``domains``...) in this process, as the command line would."""
    from synthrel_lightning.cli import main as cli_main

    try:
        cli_main(list(command))
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"`python -m synthrel_lightning {' '.join(command)}` exited with status {e.code}") from e


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(args: list[str] | None = None) -> Any:
    """Run ``study``; exit status 1 after the summary when something failed, 2 for bad input."""
    from synthrel_lightning.study.run import run_paper_study
    from synthrel_lightning.study.shards import ShardError

    parser = build_parser()
    cfg = parser.parse_args(_collect_stages(_resolve_demo(list(sys.argv[1:] if args is None else args))))
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    kwargs = cfg.as_dict()
    kwargs.pop("config", None)
    kwargs.pop("__path__", None)
    from synthrel_lightning.correlation.pairs import Pair

    kwargs["pairs"] = [Pair(**p) for p in kwargs.get("pairs") or []]
    try:
        result = run_paper_study(**kwargs, tool_runner=_run_tool_here)
    except (ShardError, ValueError, FileNotFoundError) as e:
        _fail(f"study: {e}")
    print(result.summary())
    if result.failed:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
