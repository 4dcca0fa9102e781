"""Command line: ``python -m synthrel_lightning {demo,fit,validate,test,predict,<tool>}``.

``fit``/``validate``/``test``/``predict`` are LightningCLI subcommands over
:class:`~synthrel_lightning.models.OODSegmenter` (or any LightningModule) and any
LightningDataModule (see :mod:`synthrel_lightning.trainer_cli`); they need ``--config``.
``demo`` runs ``fit`` on the packaged demo configuration (``synthrel_lightning/configs/demo.yaml``,
also reachable as ``--config demo``). The tools in :data:`TOOLS` have their own options
(``python -m synthrel_lightning <tool> --help``).

Every command has one error path (:func:`guarded`): a bad option, an unreadable configuration file,
a missing or corrupt checkpoint, a bad dataset, a missing optional dependency or an accelerator
that is not there prints ``error: <command>: <cause>``, the cause in one line, and exits with
status 2; ``--verbose`` (or ``SYNTHREL_VERBOSE=1``) adds the full report. The package's log records
(INFO and up) are shown on stderr for every subcommand, on global rank 0 (warnings on every rank).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any, TypeVar

from synthrel_lightning.packaged import DEMO_CONFIG

T = TypeVar("T")


TOOLS: dict[str, str] = {
    "generate": "synthrel_lightning.commands.generate",
    "fill_bank": "synthrel_lightning.commands.fill_bank",
    "domains": "synthrel_lightning.commands.domains",
    "caption": "synthrel_lightning.commands.caption",
    "import_controlnet": "synthrel_lightning.commands.import_controlnet",
    "import_mask2former": "synthrel_lightning.commands.import_mask2former",
    "correlate": "synthrel_lightning.commands.correlate",
    "calibrate": "synthrel_lightning.commands.calibrate",
    "sml_stats": "synthrel_lightning.commands.sml_stats",
    "export_submission": "synthrel_lightning.commands.export_submission",
    "export_model": "synthrel_lightning.commands.export_model",
    "qc": "synthrel_lightning.commands.qc",
    "share_set": "synthrel_lightning.commands.share_set",
    "study": "synthrel_lightning.commands.study",
    "sweep": "synthrel_lightning.commands.sweep",
}
"""Subcommands that are not trainer methods, and the module whose ``main(args)`` runs each."""

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
VERBOSE_ENV = "SYNTHREL_VERBOSE"
CONFIG_FLAGS = ("--config", "-c")


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (which may have been replaced since set-up)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Show the package's log records (INFO and up) on stderr as ``LEVEL module: message``, once per process.

    Processes other than global rank 0 show warnings and errors only, so a report prints once per run.
    """
    from synthrel_lightning.ranks import global_rank

    logger = logging.getLogger("synthrel_lightning")
    logger.setLevel(level if global_rank() == 0 else max(level, logging.WARNING))
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def _has_config(args: list[str]) -> bool:
    return any(a in CONFIG_FLAGS or a.startswith("--config=") for a in args)


def _resolve_demo_config(args: list[str]) -> list[str]:
    """Replace ``--config demo`` by the packaged demo configuration's path (unless a file ``demo`` exists)."""
    if Path("demo").is_file():
        return args
    out = list(args)
    for i, a in enumerate(out):
        if a == "--config=demo":
            out[i] = f"--config={DEMO_CONFIG}"
        elif a == "demo" and i > 0 and out[i - 1] in CONFIG_FLAGS:
            out[i] = str(DEMO_CONFIG)
    return out


def _usage() -> str:
    return (
        "usage: python -m synthrel_lightning {demo,fit,validate,test,predict," + ",".join(TOOLS) + "} [options]\n\n"
        "  demo                        train and validate on the embedded demo (procedural scenes; a few CPU minutes)\n"
        "  fit|validate|test|predict   LightningCLI: --config recipe.yaml [--config callbacks/x.yaml] [options]\n"
        "  generate                    build an outlier bank / synthetic evaluation set with Stable Diffusion\n"
        "  fill_bank                   fill an outlier bank from a GPU-free source (COCO cut-outs, shapes)\n"
        "  correlate                   evaluate a model zoo on paired synthetic/real sets and correlate the scores\n"
        "  calibrate                   fit a temperature on a named set and save a calibrated checkpoint\n"
        "  sml_stats                   standardized-max-logit class statistics for a checkpoint\n"
        "  domains                     render label maps in fog/night/rain/snow with a ControlNet (+ OOD objects)\n"
        "  caption                     caption the frames of a Cityscapes-layout split into a JSONL file\n"
        "  import_controlnet           convert an original-format ControlNet checkpoint for the domain generator\n"
        "  export_submission           write score maps in the SegmentMeIfYouCan submission layout\n"
        "  export_model                export a trained segmenter as ONNX, TorchScript or a pretrained folder\n"
        "  qc                          score a synthetic set per frame (label faithfulness, object presence)\n"
        "  share_set                   export a set or outlier bank as a Hugging Face dataset; push; import\n"
        "  import_mask2former          import a detectron2-format Mask2Former/RbA checkpoint (weights only)\n"
        "  study                       the paper's study: qc, zoo, correlation, calibration, fine-tuning, report\n"
        "  sweep                       run a wandb sweep file here (no account), or a W&B agent with this Python\n\n"
        "Options: --verbose (or SYNTHREL_VERBOSE=1) shows full error reports. "
        "Run any subcommand with --help for its options."
    )


def _missing_config(sub: str) -> str:
    return (
        f"{sub} needs a configuration: pass --config <recipe.yaml> (e.g. --config recipes/cityscapes_segformer.yaml, "
        "or --config demo for the demo's), or run the embedded demo: `python -m synthrel_lightning demo [options]`. "
        "Without --config nothing says what to train on, and a --data... option alone never means the demo."
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m synthrel_lightning`` and the ``synthrel`` script."""
    from_argv = args is None
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return
    configure_logging()
    sub = args[0]
    verbose = "--verbose" in args or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    args = [a for a in args if a != "--verbose"]
    if sub in TOOLS:
        tool_args = args[1:]
        guarded(sub, _after_config_check(tool_args, lambda: import_module(TOOLS[sub]).main(tool_args)), verbose)
        return
    if sub == "demo":
        print(
            f"Running the embedded demo (procedural street scenes, written under outputs/demo unless "
            f"--data.init_args.root says otherwise); configuration: {DEMO_CONFIG}",
            file=sys.stderr,
        )
        args = ["fit", "--config", str(DEMO_CONFIG), *args[1:]]
    elif sub not in TRAINER_SUBCOMMANDS:
        _fail(f"unknown subcommand {sub!r}; expected one of demo, {', '.join(TRAINER_SUBCOMMANDS + tuple(TOOLS))}")
    rest = args[1:]
    asks_help = bool(rest) and all(a in ("-h", "--help") for a in rest)
    names_model = any(a == "--model" or a.startswith("--model=") for a in rest)
    if not (_has_config(rest) or asks_help or names_model):
        _fail(_missing_config(sub), "", verbose)
    args = _resolve_demo_config(args)
    from synthrel_lightning.runs import current_run_id
    from synthrel_lightning.trainer_cli import run

    current_run_id(fresh=True)
    if from_argv:
        # LightningCLI reads sys.argv itself (and warns when given both).
        sys.argv = [sys.argv[0], *args]
    run_args = args
    guarded(args[0], _after_config_check(args[1:], lambda: run(None if from_argv else run_args)), verbose)


class CommandError(SystemExit):
    """Exit status 2 after ``error: <cause>`` was printed; ``str()`` gives the cause (for callers and tests)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a bad environment (not a bug): reported in one line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return (ValueError, OSError, MisconfigurationException)


def _prefixed(sub: str, message: str) -> tuple[str, str]:
    """``(<sub>: <first line>, the rest)`` of a message (a leading ``error:`` or ``<sub>:`` is not repeated)."""
    text = message.strip()
    text = text[len("error:") :].strip() if text.startswith("error:") else text
    first, _, rest = text.partition("\n")
    first = first.strip() or "failed"
    return (first if first.startswith(f"{sub}:") or first.startswith(f"{sub} ") else f"{sub}: {first}"), rest


def _missing_dependency(err: ImportError) -> str:
    name = (getattr(err, "name", None) or str(err)).split(".")[0]
    return (
        f"a package this needs is not installed: {name} ({err}); install it (pip install {name}) or the "
        "optional extra that provides it"
    )


def guarded(sub: str, command: Callable[[], T], verbose: bool = False) -> T:
    """Run ``command`` (the body of subcommand ``sub``) so that every failure of its input or environment prints
    ``error: <sub>: <cause>`` in one line (the full report with ``verbose``) and exits with status 2.

    Bugs (any other exception) keep their traceback; ``SystemExit`` with a number (e.g. 1 after a
    report listing failed models, or 128 + signal) passes through.
    """
    from argparse import ArgumentError

    from synthrel_lightning.trainer_cli import ConfigurationError, concise_cause

    try:
        return command()
    except CommandError:
        raise
    except SystemExit as exc:
        if isinstance(exc.code, str):
            cause, rest = _prefixed(sub, exc.code)
            _fail(cause, rest, verbose)
        raise
    except ConfigurationError as err:
        _fail(_prefixed(sub, err.cause)[0], err.details, verbose)
    except ArgumentError as err:
        _fail(_prefixed(sub, concise_cause(str(err)))[0], str(err), verbose)
    except ImportError as err:
        _fail(f"{sub}: {_missing_dependency(err)}", traceback.format_exc(), verbose)
    except _user_errors() as err:
        cause, _ = _prefixed(sub, str(err) or type(err).__name__)
        _fail(cause, traceback.format_exc(), verbose)
    raise AssertionError("unreachable")  # pragma: no cover


def _after_config_check(args: list[str], command: Callable[[], T]) -> Callable[[], T]:
    """``command`` preceded by :func:`_check_config_files` on ``args`` (both inside one error path)."""

    def checked() -> T:
        _check_config_files(args)
        return command()

    return checked


def _check_config_files(args: list[str]) -> None:
    """Read each ``--config`` YAML file named in ``args``: a syntax error names the file, line and column."""
    import yaml

    from synthrel_lightning.trainer_cli import ConfigurationError

    paths = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    paths += [args[i + 1] for i, a in enumerate(args[:-1]) if a in CONFIG_FLAGS]
    for name in paths:
        path = Path(name)
        if not path.is_file():
            continue
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigurationError(f"{path}: not a text (UTF-8) file ({err.reason} at byte {err.start})") from err
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = " ".join(str(getattr(err, "problem", "") or err).split())
            context = " ".join(str(getattr(err, "context", "") or "").split())
            raise ConfigurationError(
                f"{path}: not valid YAML{where}: {problem}" + (f" ({context})" if context else ""), str(err)
            ) from err


def _fail(cause: str, details: str = "", verbose: bool = False) -> Any:
    """Print ``error: <cause>`` (and the full report when verbose) and exit with status 2."""
    lines = [f"error: {cause}"]
    if details and verbose:
        lines += ["", "full report:", details]
    elif details:
        lines.append(f"(full report: add --verbose or set {VERBOSE_ENV}=1)")
    print("\n".join(lines), file=sys.stderr)
    raise CommandError(cause)
