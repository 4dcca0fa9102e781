"""``python -m synthrel_lightning caption``: caption every frame of a Cityscapes-layout split into a JSONL file.

Options are those of :func:`synthrel_lightning.generators.captions.caption_split`
(``--config recipes/caption_cityscapes.yaml``); the run resumes where an earlier one stopped.
"""

from __future__ import annotations

import json
import os
from typing import Any


def build_parser() -> Any:
    """The jsonargparse parser of ``caption``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from synthrel_lightning.generators.captions import caption_split

    parser = ArgumentParser(
        prog="python -m synthrel_lightning caption", description=(caption_split.__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the options below")
    parser.add_function_arguments(caption_split, as_group=False)
    return parser


def main(args: list[str] | None = None) -> None:
    """Command line of ``python -m synthrel_lightning caption``; prints the JSON summary (rank 0)."""
    from synthrel_lightning.generators.captions import caption_split

    parser = build_parser()
    cfg = parser.parse_args(args)
    init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    kwargs = {k: v for k, v in vars(init).items() if k != "config"}
    summary = caption_split(**kwargs)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(json.dumps(summary, indent=2, default=str))
