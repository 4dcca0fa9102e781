"""``python -m synthrel_lightning domains``: render Cityscapes label maps in new domains with a ControlNet.

Options are those of :func:`synthrel_lightning.generators.domain_generation.generate_domains`
(``--config recipes/generate_domains.yaml``; any option overridable on the command line).
"""

from __future__ import annotations

import json
import os
from typing import Any


def build_parser() -> Any:
    """The jsonargparse parser of ``domains``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from synthrel_lightning.generators.domain_generation import generate_domains

    parser = ArgumentParser(
        prog="python -m synthrel_lightning domains", description=(generate_domains.__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the options below")
    parser.add_function_arguments(generate_domains, as_group=False)
    return parser


def main(args: list[str] | None = None) -> None:
    """Command line of ``python -m synthrel_lightning domains``; prints the JSON summary (rank 0)."""
    from synthrel_lightning.generators.domain_generation import generate_domains

    parser = build_parser()
    cfg = parser.parse_args(args)
    init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    kwargs = {k: v for k, v in vars(init).items() if k != "config"}
    summary = generate_domains(**kwargs)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(json.dumps(summary, indent=2, default=str))
