"""``python -m synthrel_lightning export_submission``: turn predicted score maps into a SegmentMeIfYouCan submission."""

from __future__ import annotations

import inspect
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from synthrel_lightning.export.smiyc import export_smiyc_folder


def build_parser() -> ArgumentParser:
    """The ``export_submission`` parser: the options of :func:`~synthrel_lightning.export.smiyc.export_smiyc_folder`."""
    parser = ArgumentParser(
        prog="python -m synthrel_lightning export_submission",
        description=(
            "Convert the <frame>_score.npy maps written by `predict` into the SegmentMeIfYouCan file layout "
            "(<output_dir>/anomaly_p/<method>/<dataset>/<frame>.hdf5), which the benchmark's code evaluates "
            "(set its DIR_OUTPUTS to output_dir) and its leaderboard accepts."
        ),
    )
    parser.add_argument("--config", action=ActionConfigFile, help="options as a YAML file")
    parser.add_function_arguments(export_smiyc_folder)
    return parser


def main(args: list[str] | None = None) -> list[Path]:
    """Parse ``args`` (``sys.argv`` when ``None``), export, report where; bad input exits with its cause."""
    parser = build_parser()
    cfg = parser.parse_args(args)
    kwargs = {key: cfg[key] for key in inspect.signature(export_smiyc_folder).parameters}
    try:
        written = export_smiyc_folder(**kwargs)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {len(written)} SegmentMeIfYouCan score files to {written[0].parent}")
    return written


if __name__ == "__main__":
    main()
