"""``python -m synthrel_lightning fill_bank``: fill an outlier bank from a GPU-free source (COCO cut-outs, shapes).

Options are those of :func:`synthrel_lightning.synthesis.sources.fill.fill_bank`, e.g.::

    python -m synthrel_lightning fill_bank --bank data/outlier_bank/coco --n 5000 \\
        --source synthrel_lightning.synthesis.CocoObjectSource \\
        --source.annotation_json coco/annotations/instances_val2017.json \\
        --source.image_root coco/val2017 --source.on_missing skip
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from synthrel_lightning.commands._parsing import function_parser, parse_kwargs
from synthrel_lightning.synthesis.sources.fill import fill_bank

__all__ = ["build_parser", "main"]


def build_parser() -> Any:
    """The jsonargparse parser of ``fill_bank``, built from :func:`fill_bank`'s arguments."""
    parser = function_parser("fill_bank", fill_bank, skip={"report"})
    parser.set_defaults(progress=True)
    parser.add_argument("--json", type=bool, default=False, help="print the report as JSON on stdout")
    return parser


def main(args: list[str] | None = None) -> None:
    """Fill the bank and print what was written where; exit non-zero when items failed (a rerun retries them)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg, kwargs = parse_kwargs(build_parser(), fill_bank, args, skip={"report"})
    report = fill_bank(**kwargs)
    missing = getattr(kwargs["source"], "missing_images", [])
    print(
        f"fill_bank: {report.produced} added, {report.skipped} already there, {report.failed} failed "
        f"-> {report.bank} ({len(report.keys)} of {report.requested} items present)"
        + (f"; {len(missing)} source images missing (skipped)" if missing else ""),
        file=sys.stderr,
    )
    for name in report.failed_items[:10]:
        print(f"  failed: {name}", file=sys.stderr)
    if cfg.json:
        print(json.dumps(dict(report.as_dict(), missing_images=len(missing)), indent=2))
    if report.fatal:
        raise SystemExit(f"fill_bank stopped: {report.fatal}")
    if report.failed:
        raise SystemExit(f"fill_bank: {report.failed} item(s) failed; first: {report.failed_items[0]}")
