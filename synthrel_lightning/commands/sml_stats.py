"""``python -m synthrel_lightning sml_stats``: standardized-max-logit statistics for a checkpoint.

The options are the parameters of :func:`synthrel_lightning.models.score_statistics.write_sml_statistics`;
``--config`` takes the run's LightningCLI config (its ``model`` and ``data`` sections are used, the
rest is ignored)::

    python -m synthrel_lightning sml_stats --config outputs/run/config.yaml --ckpt_path outputs/run/last.ckpt

writes ``outputs/run/last_sml.ckpt`` (the checkpoint plus the statistics; ``ood_score`` set to
``standardized_max_logit``), which ``validate``/``test``/``correlate`` load like any checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from synthrel_lightning.commands._parsing import function_parser, ignore_fit_only_keys, parse_kwargs


def build_parser() -> Any:
    """The jsonargparse parser of ``sml_stats``, built from :func:`write_sml_statistics`' signature."""
    from synthrel_lightning.models.score_statistics import write_sml_statistics

    parser = function_parser(
        "sml_stats",
        write_sml_statistics,
        description="Compute standardized-max-logit statistics of a checkpoint on the training images.",
        config_help="the run's config (model and data sections)",
        as_group=True,
        fail_untyped=False,
    )
    ignore_fit_only_keys(parser, write_sml_statistics)
    return parser


def main(args: list[str] | None = None) -> Path:
    """Run ``sml_stats`` and print the written checkpoint's path."""
    from synthrel_lightning.models.score_statistics import write_sml_statistics

    _, kwargs = parse_kwargs(build_parser(), write_sml_statistics, args)
    path = write_sml_statistics(**kwargs)
    print(path)
    return path


if __name__ == "__main__":
    from synthrel_lightning.cli import main as cli_main

    cli_main(["sml_stats", *sys.argv[1:]])
