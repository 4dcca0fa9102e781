"""``python -m synthrel_lightning generate``: inpaint objects into frames, filling an outlier bank and evaluation sets.

Options are those of :func:`synthrel_lightning.synthesis.generate.generate`; ``--config gen.yaml``
reads them from YAML (recipes/generate_sd_inpainting.yaml). Without a GPU or the hub, name the tiny
offline engine: ``--engine synthrel_lightning.testing.TinyInpaintingEngine``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from synthrel_lightning.commands._parsing import function_parser, parse_kwargs
from synthrel_lightning.ranks import global_rank
from synthrel_lightning.synthesis.generate.run import generate

__all__ = ["build_parser", "main"]


def build_parser() -> Any:
    """The jsonargparse parser of ``generate``, built from :func:`generate`'s signature."""
    parser = function_parser("generate", generate)
    parser.add_argument("--json", type=bool, default=False, help="print the summary as JSON on stdout")
    return parser


def main(args: list[str] | None = None) -> None:
    """Run ``generate`` from command-line/YAML options, print a report (JSON with --json); 128+signal if stopped."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if args is None else args)
    if any(a == "--task" or a.startswith("--task=") for a in argv):
        raise SystemExit(
            "generate: --task is gone; generate inpaints objects. Render domain-shift sets with "
            "`python -m synthrel_lightning domains --config recipes/generate_domains.yaml`."
        )
    cfg, kwargs = parse_kwargs(build_parser(), generate, argv)
    summary = generate(**kwargs)
    if global_rank() == 0:  # once per run (LOCAL_RANK is 0 once per node or SLURM task)
        print(summary.report(), file=sys.stderr)
        if cfg.json:
            import json

            print(json.dumps(summary.as_dict(), indent=2, default=str))
    if summary.interrupted:
        import signal

        raise SystemExit(128 + int(signal.Signals[summary.interrupted]))
