"""Command line: ``python -m synthrel_lightning {fit,validate,test,predict,generate,correlate,calibrate}``.

``fit``/``validate``/``test``/``predict`` are LightningCLI subcommands over
:class:`~synthrel_lightning.models.OODSegmenter` (or any LightningModule) and any
LightningDataModule; with no ``--config``
they start from the embedded demo's configuration (``synthrel_lightning/configs/demo.yaml``),
which later options override.
``generate``, ``correlate`` and ``calibrate`` are tools with their own options
(``python -m synthrel_lightning <tool> --help``).
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
"""The embedded demo's configuration, used when ``fit`` gets no config."""

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
}
"""Subcommands that are not trainer methods, and the module whose ``main(args)`` runs each."""

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _needs_demo_config(args: list[str]) -> bool:
    """True for a trainer subcommand given no ``--config``: the demo config becomes its base."""
    if not args or args[0] not in TRAINER_SUBCOMMANDS:
        return False
    return not any(a in ("--config", "-c") or a.startswith("--config=") for a in args[1:])


def _usage() -> str:
    return (
        "usage: python -m synthrel_lightning {fit,validate,test,predict,generate,correlate,calibrate} [options]\n\n"
        "  fit|validate|test|predict   LightningCLI over OODSegmenter; no --config runs the embedded demo\n"
        "  generate                    build an outlier bank / synthetic evaluation set with Stable Diffusion\n"
        "  fill_bank                   fill an outlier bank from a GPU-free source (COCO cut-outs, shapes)\n"
        "  correlate                   evaluate a model zoo on paired synthetic/real sets and correlate the scores\n"
        "  calibrate                   fit a temperature on a named set and save a calibrated checkpoint\n"
        "  domains                     render label maps in fog/night/rain/snow with a ControlNet (+ OOD objects)\n"
        "  caption                     caption the frames of a Cityscapes-layout split into a JSONL file\n"
        "  import_controlnet           convert an original-format ControlNet checkpoint for the domain generator\n\n"
        "Run any subcommand with --help for its options."
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m synthrel_lightning`` and the ``synthrel`` script."""
    from_argv = args is None
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return
    if args[0] in TOOLS:
        import_module(TOOLS[args[0]]).main(args[1:])
        return
    if args[0] not in TRAINER_SUBCOMMANDS:
        raise SystemExit(f"unknown subcommand {args[0]!r}\n\n{_usage()}")
    if _needs_demo_config(args):
        args = [args[0], "--config", str(DEMO_CONFIG), *args[1:]]
    if from_argv:
        # LightningCLI reads sys.argv itself (and warns when given both).
        sys.argv = [sys.argv[0], *args]
    run_lightning_cli(None if from_argv else args)


def run_lightning_cli(args: list[str] | None) -> None:
    """Run LightningCLI on ``args`` (subcommand first; ``None`` reads ``sys.argv``)."""
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    LightningCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        # Sweep agents re-use run folders; never fail because a config.yaml exists.
        save_config_kwargs={"overwrite": True},
        args=args,
    )
