"""``python -m synthrel_lightning export_submission``: turn predicted score maps into a SegmentMeIfYouCan submission."""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from synthrel_lightning.commands._parsing import function_parser, parse_kwargs
from synthrel_lightning.export.smiyc import export_smiyc_folder


def build_parser() -> ArgumentParser:
    """The ``export_submission`` parser: the options of :func:`~synthrel_lightning.export.smiyc.export_smiyc_folder`."""
    return function_parser(
        "export_submission",
        export_smiyc_folder,
        description=(
            "Convert the <frame>_score.npy maps written by `predict` into the SegmentMeIfYouCan file layout "
            "(<output_dir>/anomaly_p/<method>/<folder>/<frame>.hdf5, <folder> the dataset's persistence folder, "
            "e.g. AnomalyTrack-all for AnomalyTrack-test), which the benchmark's code evaluates "
            "(set its DIR_OUTPUTS to output_dir) and its leaderboard accepts."
        ),
        config_help="options as a YAML file",
        as_group=True,
    )


def main(args: list[str] | None = None) -> list[Path]:
    """Parse ``args`` (``sys.argv`` when ``None``), export, report where; bad input exits with its cause."""
    _, kwargs = parse_kwargs(build_parser(), export_smiyc_folder, args)
    try:
        written = export_smiyc_folder(**kwargs)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {len(written)} SegmentMeIfYouCan score files to {written[0].parent}")
    return written


if __name__ == "__main__":
    main()
