"""``python -m synthrel_lightning generate``: inpaint objects into frames, filling an outlier bank and evaluation sets.

Options are those of :func:`synthrel_lightning.synthesis.generate.generate`; ``--config gen.yaml``
reads them from YAML (recipes/generate_sd_inpainting.yaml). Without a GPU or the hub, name the tiny
offline engine: ``--engine synthrel_lightning.testing.TinyInpaintingEngine``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from synthrel_lightning.synthesis.generate.run import generate

__all__ = ["build_parser", "main"]


def build_parser() -> Any:
    """The jsonargparse parser of ``generate``, built from :func:`generate`'s signature."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="python -m synthrel_lightning generate",
        description=(generate.__doc__ or "").split("\n")[0],
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the options below")
    parser.add_function_arguments(generate, as_group=False)
    parser.add_argument("--json", type=bool, default=False, help="print the summary as JSON on stdout")
    return parser


def main(args: list[str] | None = None) -> None:
    """Run ``generate`` from command-line/YAML options, print a report (JSON with --json); 128+signal if stopped."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    cfg = parser.parse_args(args)
    init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    kwargs = {k: v for k, v in vars(init).items() if k not in ("config", "json", "__path__")}
    summary = generate(**kwargs)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        print(summary.report(), file=sys.stderr)
        if cfg.json:
            import json

            print(json.dumps(summary.as_dict(), indent=2, default=str))
    if summary.interrupted:
        import signal

        raise SystemExit(128 + int(signal.Signals[summary.interrupted]))
