"""``python -m synthrel_lightning correlate``: evaluate a model zoo on paired synthetic/real sets, correlate the scores.

The options are the parameters of :func:`synthrel_lightning.correlation.study.run_study`.
Example config::

    zoo:
      - {name: deeplab_r50, checkpoint: runs/deeplab_r50/last.ckpt, config: runs/deeplab_r50/config.yaml}
      - name: segformer_b0
        checkpoint: runs/segformer_b0/last.ckpt
        model: {class_path: synthrel_lightning.models.OODSegmenter, init_args: {segmenter: ...}}
    data: {class_path: synthrel_lightning.data.CityscapesOODDataModule, init_args: {...}}
    pairs:
      - {synthetic: synthetic_fog, real: acdc_fog, metrics: [miou, ece]}
      - {synthetic: cityscapes_objects, real: road_anomaly, metrics: [ap, fpr95, mean_F1]}
    output_dir: outputs/correlate

The exit status is 1 when a model failed (its error is in ``results.json`` and on stderr).
With several devices (``trainer: {devices: 2, strategy: ddp}``), every process takes part in each
evaluation and global rank 0 alone writes the results, correlations and plots and prints the report.
"""

from __future__ import annotations

import inspect
import logging
import sys
from typing import Any

from synthrel_lightning.commands._parsing import function_parser, instantiate
from synthrel_lightning.correlation.study import StudyReport, run_study
from synthrel_lightning.correlation.zoo import ZooEntry


def build_parser() -> Any:
    """The jsonargparse parser of ``correlate``, built from :func:`run_study`'s signature."""
    return function_parser(
        "correlate",
        run_study,
        description="Evaluate a model zoo on paired synthetic/real sets and correlate the scores.",
        config_help="YAML config with the options below",
        as_group=True,
    )


def _show_info_logs() -> None:
    # Progress is logged at INFO: show it unless the application configured logging itself.
    logger = logging.getLogger("synthrel_lightning")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        # Lightning's per-Trainer banners (GPU available, tips) would bury the per-model lines.
        logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def main(args: list[str] | None = None) -> StudyReport:
    """Run ``correlate``; exits with status 1 after the report when a model failed."""
    parser = build_parser()
    cfg = parser.parse_args(args)
    _show_info_logs()
    # Zoo entries stay data: each model is built inside its own try block, so one bad entry fails alone.
    zoo = [ZooEntry(**(e.as_dict() if hasattr(e, "as_dict") else dict(e))) for e in cfg.zoo]
    init = instantiate(parser, cfg.clone().update([], "zoo"))
    kwargs = {name: init[name] for name in inspect.signature(run_study).parameters if name != "zoo"}
    report = run_study(zoo=zoo, **kwargs)
    if not report.primary:
        return report  # global rank 0 prints the report (once per run, not once per process)
    for line in report.lines():
        print(line)
    print(report.summary())
    if report.failed:
        print(f"correlate: {len(report.failed)} model(s) failed:", file=sys.stderr)
        for name, error in report.failed.items():
            print(f"  {name}: {error}", file=sys.stderr)
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    from synthrel_lightning.cli import main as cli_main

    cli_main(["correlate", *sys.argv[1:]])
