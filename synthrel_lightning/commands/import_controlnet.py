"""``python -m synthrel_lightning import_controlnet``: convert an original-format ControlNet checkpoint.

Options are those of :func:`synthrel_lightning.generators.controlnet_import.import_controlnet`, e.g.
``--checkpoint genval_cityscapes.ckpt --original_config cldm_v15.yaml --conditioning_channels 1
--encoding label_ids_1ch --out models/controlnet-cityscapes``; a ``.ckpt`` that pickles arbitrary
objects loads only with ``--trust_checkpoint`` (files whose origin you trust).
"""

from __future__ import annotations

import json
from typing import Any

from synthrel_lightning.commands._parsing import function_parser, parse_kwargs


def build_parser() -> Any:
    """The jsonargparse parser of ``import_controlnet``."""
    from synthrel_lightning.generators.controlnet_import import import_controlnet

    return function_parser("import_controlnet", import_controlnet)


def main(args: list[str] | None = None) -> None:
    """Command line of ``python -m synthrel_lightning import_controlnet``; prints a JSON summary."""
    from synthrel_lightning.generators.controlnet_import import import_controlnet

    _, kwargs = parse_kwargs(build_parser(), import_controlnet, args)
    print(json.dumps(import_controlnet(**kwargs), indent=2))
