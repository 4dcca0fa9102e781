"""Import a ControlNet checkpoint in the original (LDM / lllyasviel ControlNet) format into the diffusers layout.

GenVal (github.com/valeoai/GenVal) trains its Cityscapes ControlNet with lllyasviel's
ControlNet code, which saves ``.ckpt`` files in the LDM layout (``control_model.*`` keys)
with ``hint_channels: 1``. :func:`import_controlnet` reads such a file safely (tensors only,
through :func:`synthrel_lightning.checkpoints.load_state_dict`; safetensors directly), converts
it with ``ControlNetModel.from_single_file`` against the training YAML (``original_config``,
e.g. GenVal's ``ControlNet/models/cldm_v15.yaml``), and writes a ``save_pretrained`` folder
with its ``synthrel_encoding.json`` so the domain generator loads it directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from synthrel_lightning.generators.encodings import EncodingError, get_encoding, write_encoding_file

__all__ = ["import_controlnet"]


def _original_config(path: str | os.PathLike[str], conditioning_channels: int | None) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"original_config {path} does not exist (expected the ControlNet training YAML)")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        params = config["model"]["params"]["control_stage_config"]["params"]
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"{path} is not a ControlNet (cldm) config: expected model.params.control_stage_config.params"
        ) from e
    if conditioning_channels is not None:
        params["hint_channels"] = int(conditioning_channels)
    return config


def import_controlnet(
    checkpoint: str,
    out: str,
    original_config: str,
    encoding: str = "label_ids_1ch",
    conditioning_channels: int | None = None,
    trusted: bool = False,
) -> dict[str, Any]:
    """Convert an original-format ControlNet ``checkpoint`` (.ckpt/.safetensors) to a diffusers folder + encoding file.

    ``conditioning_channels`` overrides the YAML's ``hint_channels`` (GenVal's checkpoint has 1);
    ``trusted`` allows pickled objects in a ``.ckpt`` (only for files you trust).
    """
    from diffusers import ControlNetModel

    enc = get_encoding(encoding)
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist (expected an original-format ControlNet .ckpt/.safetensors)"
        )
    config = _original_config(original_config, conditioning_channels)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        from synthrel_lightning.checkpoints import load_state_dict

        state = load_state_dict(path, trusted=trusted, who="import_controlnet")
    if not any(k.startswith("control_model.") for k in state):
        raise ValueError(
            f"{path} holds no 'control_model.*' weights: expected a ControlNet checkpoint in the original format"
        )
    model = ControlNetModel.from_single_file(state, original_config=config)
    channels = int(model.config.conditioning_channels)
    if channels != enc.channels:
        raise EncodingError(
            f"the imported ControlNet has conditioning_channels={channels} but encoding {enc.name!r} has "
            f"{enc.channels}; pass the encoding it was trained with (or conditioning_channels)"
        )
    model.save_pretrained(out)
    write_encoding_file(out, enc)
    return {"out": str(out), "encoding": enc.name, "conditioning_channels": channels}
