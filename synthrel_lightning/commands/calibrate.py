"""``python -m synthrel_lightning calibrate``: fit a temperature on a named set and save a calibrated checkpoint."""

from __future__ import annotations

import sys

from jsonargparse import ArgumentParser

from synthrel_lightning.calibration import CalibrationReport, calibrate
from synthrel_lightning.checkpoints import CheckpointError
from synthrel_lightning.commands._parsing import function_parser, ignore_fit_only_keys, parse_kwargs


def build_parser() -> ArgumentParser:
    """The ``calibrate`` parser: the recipe's ``model`` and ``data`` plus the options of :func:`calibrate`."""
    import lightning as L

    parser = function_parser(
        "calibrate",
        calibrate,
        description=(
            "Fit one temperature on a named validation set for a checkpoint and write a calibrated copy. "
            "Reads the training recipe's model and data sections (or a fit run's config.yaml); its trainer, "
            "optimizer, lr_scheduler, seed_everything and other fit-only entries are accepted and ignored."
        ),
        config_help="training recipe (YAML) with model and data",
        as_group=True,
        skip={"model", "data"},
    )
    parser.add_subclass_arguments(L.LightningModule, "model", required=True, help="the model, as in the recipe")
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True, help="the data, as in the recipe")
    parser.set_defaults({"model": {"class_path": "synthrel_lightning.models.OODSegmenter"}})
    ignore_fit_only_keys(parser, calibrate)
    return parser


def main(args: list[str] | None = None) -> CalibrationReport:
    """Parse ``args`` (``sys.argv`` when ``None``), calibrate, print the report; bad input exits with its cause."""
    _, kwargs = parse_kwargs(build_parser(), calibrate, args)
    try:
        report = calibrate(**kwargs)
    except (CheckpointError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(report.summary())
    return report


if __name__ == "__main__":
    from synthrel_lightning.cli import main as cli_main

    cli_main(["calibrate", *sys.argv[1:]])
