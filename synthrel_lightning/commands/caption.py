"""``python -m synthrel_lightning caption``: caption every frame of a Cityscapes-layout split into a JSONL file.

Options are those of :func:`synthrel_lightning.generators.captions.caption_split`
(``--config recipes/caption_cityscapes.yaml``); the run resumes where an earlier one stopped.
"""

from __future__ import annotations

from typing import Any

from synthrel_lightning.commands._parsing import function_parser, parse_kwargs, print_json_on_rank_zero


def build_parser() -> Any:
    """The jsonargparse parser of ``caption``."""
    from synthrel_lightning.generators.captions import caption_split

    return function_parser("caption", caption_split)


def main(args: list[str] | None = None) -> None:
    """Command line of ``python -m synthrel_lightning caption``; prints the JSON summary (rank 0)."""
    from synthrel_lightning.generators.captions import caption_split

    _, kwargs = parse_kwargs(build_parser(), caption_split, args)
    print_json_on_rank_zero(caption_split(**kwargs))
