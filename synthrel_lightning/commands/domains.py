"""``python -m synthrel_lightning domains``: render Cityscapes label maps in new domains with a ControlNet.

Options are those of :func:`synthrel_lightning.generators.domain_generation.generate_domains`
(``--config recipes/generate_domains.yaml``; any option overridable on the command line).
"""

from __future__ import annotations

from typing import Any

from synthrel_lightning.commands._parsing import function_parser, parse_kwargs, print_json_on_rank_zero


def build_parser() -> Any:
    """The jsonargparse parser of ``domains``."""
    from synthrel_lightning.generators.domain_generation import generate_domains

    return function_parser("domains", generate_domains)


def main(args: list[str] | None = None) -> None:
    """Command line of ``python -m synthrel_lightning domains``; prints the JSON summary (rank 0)."""
    from synthrel_lightning.generators.domain_generation import generate_domains

    _, kwargs = parse_kwargs(build_parser(), generate_domains, args)
    print_json_on_rank_zero(generate_domains(**kwargs))
