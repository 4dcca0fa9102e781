"""Command line: ``python -m synthrel_lightning {demo,fit,validate,test,predict,<tool>}``.

``fit``/``validate``/``test``/``predict`` are LightningCLI subcommands over
:class:`~synthrel_lightning.models.OODSegmenter` (or any LightningModule) and any
LightningDataModule (see :mod:`synthrel_lightning.trainer_cli`); they need ``--config``.
``demo`` runs ``fit`` on the packaged demo configuration (``synthrel_lightning/configs/demo.yaml``,
also reachable as ``--config demo``), as does ``fit`` given no argument at all. The tools in
:data:`TOOLS` have their own options (``python -m synthrel_lightning <tool> --help``).

Configuration errors of the trainer subcommands print one short message leading with the cause
and exit with status 2; ``--verbose`` (or ``SYNTHREL_VERBOSE=1``) adds the full report. The
package's log records (INFO and up) are shown on stderr for every subcommand.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from importlib import import_module
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
"""The packaged demo configuration: ``demo`` runs it; ``--config demo`` names it."""

TOOLS: dict[str, str] = {
    "generate": "synthrel_lightning.commands.generate",
    "fill_bank": "synthrel_lightning.commands.fill_bank",
    "domains": "synthrel_lightning.commands.domains",
    "caption": "synthrel_lightning.commands.caption",
    "import_controlnet": "synthrel_lightning.commands.import_controlnet",
    "correlate": "synthrel_lightning.commands.correlate",
    "calibrate": "synthrel_lightning.commands.calibrate",
    "sml_stats": "synthrel_lightning.commands.sml_stats",
    "export_submission": "synthrel_lightning.commands.export_submission",
    "qc": "synthrel_lightning.commands.qc",
    "study": "synthrel_lightning.commands.study",
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
    """Show the package's log records (INFO and up) on stderr as ``LEVEL module: message``, once per process."""
    logger = logging.getLogger("synthrel_lightning")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def _has_config(args: list[str]) -> bool:
    return any(a in CONFIG_FLAGS or a.startswith("--config=") for a in args)


def _resolve_demo_config(args: list[str]) -> list[str]:
    """Replace ``--config demo`` by the packaged demo configuration's path (unless a file ``demo`` exists)."""
    if Path("demo").exists():
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
        "  qc                          score a synthetic set per frame (label faithfulness, object presence)\n"
        "  study                       the paper's study: qc, zoo, correlation, calibration, fine-tuning, report\n\n"
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
    if sub in TOOLS:
        import_module(TOOLS[sub]).main(args[1:])
        return
    verbose = "--verbose" in args or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    args = [a for a in args if a != "--verbose"]
    if sub == "demo" or (sub == "fit" and len(args) == 1):
        print(
            f"Running the embedded demo (procedural street scenes, written under outputs/demo unless "
            f"--data.init_args.root says otherwise); configuration: {DEMO_CONFIG}",
            file=sys.stderr,
        )
        args = ["fit", "--config", str(DEMO_CONFIG), *args[1:]]
    elif sub not in TRAINER_SUBCOMMANDS:
        raise SystemExit(f"unknown subcommand {sub!r}\n\n{_usage()}")
    rest = args[1:]
    asks_help = bool(rest) and all(a in ("-h", "--help") for a in rest)
    names_model = any(a == "--model" or a.startswith("--model=") for a in rest)
    if not (_has_config(rest) or asks_help or names_model):
        _fail(_missing_config(sub), "", verbose)
    args = _resolve_demo_config(args)
    from synthrel_lightning.runs import current_run_id
    from synthrel_lightning.trainer_cli import ConfigurationError, run

    current_run_id(fresh=True)
    if from_argv:
        # LightningCLI reads sys.argv itself (and warns when given both).
        sys.argv = [sys.argv[0], *args]
    from synthrel_lightning.checkpoints import CheckpointError
    from synthrel_lightning.data.io import DatasetError

    try:
        run(None if from_argv else args)
    except ConfigurationError as err:
        _fail(f"{args[0]}: {err.cause}", err.details, verbose)
    except (DatasetError, CheckpointError) as err:
        # Bad input found while running: the message names the file and what was expected.
        _fail(f"{args[0]}: {err}", traceback.format_exc(), verbose)


def _fail(cause: str, details: str, verbose: bool) -> None:
    """Print ``error: <cause>`` (and the full report when verbose) and exit with status 2."""
    lines = [f"error: {cause}"]
    if details and verbose:
        lines += ["", "full report:", details]
    elif details:
        lines.append(f"(full report: add --verbose or set {VERBOSE_ENV}=1)")
    print("\n".join(lines), file=sys.stderr)
    raise SystemExit(2)
