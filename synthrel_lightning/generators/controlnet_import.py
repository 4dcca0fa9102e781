"""Import a ControlNet checkpoint in the original (LDM / lllyasviel ControlNet) format into the diffusers layout.

GenVal (github.com/valeoai/GenVal) trains its Cityscapes ControlNet with lllyasviel's
ControlNet code, which saves ``.ckpt`` files in the LDM layout (``control_model.*`` keys)
with ``hint_channels: 1``. :func:`import_controlnet` reads such a file safely (tensors only,
through :func:`synthrel_lightning.checkpoints.load_state_dict`; safetensors directly), converts
it with diffusers' single-file conversion functions (those of ``ControlNetModel.from_single_file``)
against the training YAML (``original_config``, e.g. GenVal's ``ControlNet/models/cldm_v15.yaml``),
and writes a ``save_pretrained`` folder
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


def _convert(state: dict[str, Any], config: dict[str, Any]) -> Any:
    """The diffusers ControlNetModel of an LDM-format state dict, configured from the cldm YAML.

    diffusers' own ``ControlNetModel.from_single_file(..., original_config=...)`` (0.42) fails while
    building the config (it omits the checkpoint argument), so the same conversion functions
    are called here directly: the config from ``create_unet_diffusers_config_from_ldm`` plus
    ``hint_channels``, the weights from ``convert_controlnet_checkpoint``, loaded strictly.
    """
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint, create_unet_diffusers_config_from_ldm

    unet = create_unet_diffusers_config_from_ldm(config, state)
    hint = config["model"]["params"]["control_stage_config"]["params"]["hint_channels"]
    keys = (
        "in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
        "attention_head_dim", "use_linear_projection", "class_embed_type", "addition_embed_type",
        "addition_time_embed_dim", "projection_class_embeddings_input_dim", "transformer_layers_per_block",
    )  # fmt: skip
    cn_config = {"conditioning_channels": int(hint), **{k: unet[k] for k in keys if k in unet}}
    model = ControlNetModel(**cn_config)
    weights = convert_controlnet_checkpoint(state, cn_config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint does not match the ControlNet of its config: {len(missing)} missing weights "
            f"(first: {list(missing)[:3]}), {len(unexpected)} unexpected (first: {list(unexpected)[:3]}); "
            "is original_config the YAML it was trained with?"
        )
    return model.eval()


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
    model = _convert(state, config)
    channels = int(model.config.conditioning_channels)
    if channels != enc.channels:
        raise EncodingError(
            f"the imported ControlNet has conditioning_channels={channels} but encoding {enc.name!r} has "
            f"{enc.channels}; pass the encoding it was trained with (or conditioning_channels)"
        )
    model.save_pretrained(out)
    write_encoding_file(out, enc)
    return {"out": str(out), "encoding": enc.name, "conditioning_channels": channels}
