"""``python -m synthrel_lightning import_controlnet``: convert an original-format ControlNet checkpoint.

Options are those of :func:`synthrel_lightning.generators.controlnet_import.import_controlnet`, e.g.
``--checkpoint genval_cityscapes.ckpt --original_config cldm_v15.yaml --conditioning_channels 1
--encoding label_ids_1ch --out models/controlnet-cityscapes``.
"""

from __future__ import annotations

import json
from typing import Any


def build_parser() -> Any:
    """The jsonargparse parser of ``import_controlnet``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from synthrel_lightning.generators.controlnet_import import import_controlnet

    parser = ArgumentParser(
        prog="python -m synthrel_lightning import_controlnet",
        description=(import_controlnet.__doc__ or "").split("\n")[0],
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the options below")
    parser.add_function_arguments(import_controlnet, as_group=False)
    return parser


def main(args: list[str] | None = None) -> None:
    """Command line of ``python -m synthrel_lightning import_controlnet``; prints a JSON summary."""
    from synthrel_lightning.generators.controlnet_import import import_controlnet

    cfg = build_parser().parse_args(args)
    kwargs = {k: v for k, v in vars(cfg).items() if k != "config"}
    print(json.dumps(import_controlnet(**kwargs), indent=2))
