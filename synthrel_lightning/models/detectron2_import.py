"""Mask2Former / RbA checkpoints in detectron2's format, loaded into transformers' Mask2Former.

A detectron2 checkpoint is a ``.pkl`` (a pickled dict of numpy arrays, detectron2's model zoo) or a
``.pth`` (``torch.save``) holding ``{"model": state_dict, ...}`` in the names of the original code
(github.com/facebookresearch/Mask2Former, which RbA, github.com/NazirNayal8/RbA, builds on):
``backbone.*`` (Swin), ``sem_seg_head.pixel_decoder.*`` (MSDeformAttnPixelDecoder),
``sem_seg_head.predictor.*`` (MultiScaleMaskedTransformerDecoder). The renaming rules follow
transformers' own converter (``convert_mask2former_original_pytorch_checkpoint_to_pytorch.py``),
written against the parameter names of the installed transformers. Nothing pickled is executed: a
``.pkl`` is read by an unpickler that builds only numpy arrays, dicts, lists and plain values, a
``.pth`` by ``torch.load(weights_only=True)``; anything else is refused, naming the file.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

#: Checkpoint entries that carry no weights of transformers' model (buffers it recomputes, input statistics).
IGNORED = re.compile(r"(relative_position_index|attn_mask|^pixel_mean|^pixel_std)$")

_SWIN_BLOCK = [
    (r"norm1\.(weight|bias)", r"layernorm_before.\1"),
    (r"norm2\.(weight|bias)", r"layernorm_after.\1"),
    (r"attn\.proj\.(weight|bias)", r"attention.o_proj.\1"),
    (r"attn\.relative_position_bias_table", r"attention.relative_position_bias.relative_position_bias_table"),
    (r"mlp\.(fc1|fc2)\.(weight|bias)", r"mlp.\1.\2"),
]
_ENCODER_LAYER = [
    (r"self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)", r"self_attn.\1.\2"),
    (r"norm1\.(weight|bias)", r"self_attn_layer_norm.\1"),
    (r"norm2\.(weight|bias)", r"final_layer_norm.\1"),
    (r"linear1\.(weight|bias)", r"fc1.\1"),
    (r"linear2\.(weight|bias)", r"fc2.\1"),
]
_DECODER_LAYER = [
    (r"transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"\1.self_attn.out_proj.\2"),
    (r"transformer_self_attention_layers\.(\d+)\.norm\.(weight|bias)", r"\1.self_attn_layer_norm.\2"),
    (r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(in_proj_weight|in_proj_bias)", r"\1.cross_attn.\2"),
    (
        r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.out_proj\.(weight|bias)",
        r"\1.cross_attn.out_proj.\2",
    ),
    (r"transformer_cross_attention_layers\.(\d+)\.norm\.(weight|bias)", r"\1.cross_attn_layer_norm.\2"),
    (r"transformer_ffn_layers\.(\d+)\.linear1\.(weight|bias)", r"\1.fc1.\2"),
    (r"transformer_ffn_layers\.(\d+)\.linear2\.(weight|bias)", r"\1.fc2.\2"),
    (r"transformer_ffn_layers\.(\d+)\.norm\.(weight|bias)", r"\1.final_layer_norm.\2"),
]


def _match(rules: list[tuple[str, str]], name: str) -> str | None:
    for pattern, repl in rules:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def _split_qkv(dst: str, value: Tensor, names: tuple[str, str, str], kind: str) -> dict[str, Tensor]:
    """A fused (3C, ...) query/key/value projection split into three entries, in that order."""
    third = value.shape[0] // 3
    return {f"{dst}.{n}.{kind}": value[i * third : (i + 1) * third] for i, n in enumerate(names)}


def map_detectron2_key(name: str, value: Tensor) -> dict[str, Tensor] | None:
    """The transformers entries (names relative to ``Mask2FormerForUniversalSegmentation``) of one checkpoint entry.

    Returns None for an entry no rule covers; ``{}`` for an ignored buffer.
    """
    if IGNORED.search(name):
        return {}
    m = re.fullmatch(r"backbone\.(.+)", name)
    if m:
        rest, dst = m.group(1), "model.pixel_level_module.encoder"
        if (p := re.fullmatch(r"patch_embed\.proj\.(weight|bias)", rest)) is not None:
            return {f"{dst}.swin.embeddings.patch_embeddings.projection.{p.group(1)}": value}
        if (p := re.fullmatch(r"patch_embed\.norm\.(weight|bias)", rest)) is not None:
            return {f"{dst}.swin.embeddings.norm.{p.group(1)}": value}
        if (p := re.fullmatch(r"norm(\d+)\.(weight|bias)", rest)) is not None:
            return {f"{dst}.hidden_states_norms.stage{int(p.group(1)) + 1}.{p.group(2)}": value}
        if p := re.fullmatch(r"layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)", rest):
            return {f"{dst}.swin.encoder.layers.{p.group(1)}.downsample.{p.group(2)}": value}
        if (p := re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", rest)) is not None:
            block = f"{dst}.swin.encoder.layers.{p.group(1)}.blocks.{p.group(2)}"
            if (q := re.fullmatch(r"attn\.qkv\.(weight|bias)", p.group(3))) is not None:
                return _split_qkv(f"{block}.attention", value, ("q_proj", "k_proj", "v_proj"), q.group(1))
            sub = _match(_SWIN_BLOCK, p.group(3))
            return None if sub is None else {f"{block}.{sub}": value}
        return None
    m = re.fullmatch(r"sem_seg_head\.pixel_decoder\.(.+)", name)
    if m:
        rest, dst = m.group(1), "model.pixel_level_module.decoder"
        if rest == "transformer.level_embed":
            return {f"{dst}.level_embed": value}
        if (p := re.fullmatch(r"input_proj\.(\d+)\.(\d+)\.(weight|bias)", rest)) is not None:
            return {f"{dst}.input_projections.{p.group(1)}.{p.group(2)}.{p.group(3)}": value}
        if (p := re.fullmatch(r"transformer\.encoder\.layers\.(\d+)\.(.+)", rest)) is not None:
            sub = _match(_ENCODER_LAYER, p.group(2))
            return None if sub is None else {f"{dst}.encoder.layers.{p.group(1)}.{sub}": value}
        if (p := re.fullmatch(r"mask_features\.(weight|bias)", rest)) is not None:
            return {f"{dst}.mask_projection.{p.group(1)}": value}
        # detectron2's Conv2d carries its norm as a child: adapter_1.weight, adapter_1.norm.{weight,bias}
        if (p := re.fullmatch(r"(adapter_\d+|layer_\d+)\.(weight|bias)", rest)) is not None:
            return {f"{dst}.{p.group(1)}.0.{p.group(2)}": value}
        if (p := re.fullmatch(r"(adapter_\d+|layer_\d+)\.norm\.(weight|bias)", rest)) is not None:
            return {f"{dst}.{p.group(1)}.1.{p.group(2)}": value}
        return None
    m = re.fullmatch(r"sem_seg_head\.predictor\.(.+)", name)
    if m:
        rest, dst = m.group(1), "model.transformer_module"
        if (p := re.fullmatch(r"class_embed\.(weight|bias)", rest)) is not None:
            return {f"class_predictor.{p.group(1)}": value}
        if (p := re.fullmatch(r"mask_embed\.layers\.(\d+)\.(weight|bias)", rest)) is not None:
            return {f"{dst}.decoder.mask_predictor.mask_embedder.{p.group(1)}.0.{p.group(2)}": value}
        if (p := re.fullmatch(r"decoder_norm\.(weight|bias)", rest)) is not None:
            return {f"{dst}.decoder.layernorm.{p.group(1)}": value}
        simple = {"query_embed.weight": "queries_embedder.weight", "query_feat.weight": "queries_features.weight"}
        if rest in simple:
            return {f"{dst}.{simple[rest]}": value}
        if rest == "level_embed.weight":
            return {f"{dst}.level_embed.weight": value}
        p = re.fullmatch(r"transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)", rest)
        if p is not None:
            return _split_qkv(
                f"{dst}.decoder.layers.{p.group(1)}.self_attn", value, ("q_proj", "k_proj", "v_proj"), p.group(2)
            )
        sub = _match(_DECODER_LAYER, rest)
        return None if sub is None else {f"{dst}.decoder.layers.{sub}": value}
    if name == "criterion.empty_weight":
        return {"criterion.empty_weight": value}
    return None


class _WeightsOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dicts, lists and plain values; refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def read_detectron2_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The ``"model"`` state dict of a detectron2 checkpoint as tensors, read without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such detectron2 checkpoint (expected a .pkl or .pth file)")
    data = path.read_bytes()
    try:
        if data[:2] == b"PK" or path.suffix in (".pth", ".pt"):
            content = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        else:
            content = _WeightsOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - every failure is a refusal naming the file
        raise ValueError(
            f"{path}: refused: not a weights-only detectron2 checkpoint ({type(err).__name__}: {err}); only numpy "
            "arrays/tensors, dicts and plain values are read, no pickled code is run"
        ) from err
    model = content.get("model", content) if isinstance(content, Mapping) else None
    if not isinstance(model, Mapping) or not model:
        raise ValueError(f"{path}: expected a dict with a 'model' state dict, got {type(content).__name__}")
    out: dict[str, Tensor] = {}
    for key, value in model.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value))
        if not isinstance(value, Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, expected an array")
        out[str(key)] = value
    return out


def detectron2_to_transformers(state: Mapping[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Rename a detectron2 Mask2Former state dict to transformers' names; unknown entries are an error."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        mapped = map_detectron2_key(key, value)
        if mapped is None:
            unknown.append(key)
        else:
            out.update(mapped)
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} entries have no counterpart in transformers' Mask2Former, first {unknown[:5]}"
            " (expected detectron2 Mask2Former names: backbone.* (Swin), sem_seg_head.pixel_decoder.*, "
            "sem_seg_head.predictor.*)"
        )
    return out


#: The level embeddings whose first dimension is a level count: (transformers key, config option, what it counts).
LEVEL_EMBEDS = (
    (
        "model.pixel_level_module.decoder.level_embed",
        "encoder_feature_levels",
        "the pixel decoder's deformable encoder",
    ),
    ("model.transformer_module.level_embed.weight", "decoder_feature_levels", "the transformer decoder"),
)


def detectron2_feature_levels(state: Mapping[str, Tensor]) -> dict[str, int]:
    """``encoder_feature_levels`` / ``decoder_feature_levels`` of a checkpoint, from its level embeddings.

    ``state`` is in detectron2's names (``sem_seg_head.pixel_decoder.transformer.level_embed``,
    ``sem_seg_head.predictor.level_embed.weight``) or transformers'; absent entries are left out.
    """
    names = {
        "encoder_feature_levels": ("sem_seg_head.pixel_decoder.transformer.level_embed", LEVEL_EMBEDS[0][0]),
        "decoder_feature_levels": ("sem_seg_head.predictor.level_embed.weight", LEVEL_EMBEDS[1][0]),
    }
    return {opt: int(state[k].shape[0]) for opt, keys in names.items() for k in keys if k in state}


def _check_feature_levels(state: Mapping[str, Tensor], target: Mapping[str, Tensor], path: str | Path) -> None:
    """A level count that differs from the model's is named with the option that sets it."""
    for key, option, what in LEVEL_EMBEDS:
        if key in state and key in target and state[key].shape[0] != target[key].shape[0]:
            ours, theirs = tuple(target[key].shape), tuple(state[key].shape)
            raise ValueError(
                f"{path}: shape mismatch at {key!r}: checkpoint {theirs}, model {ours}; the checkpoint's {what} "
                f"reads {theirs[0]} feature level(s), the model {ours[0]}: build it with {option}={theirs[0]}"
            )


def load_detectron2_mask2former(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a detectron2 Mask2Former/RbA checkpoint into a transformers ``Mask2FormerForUniversalSegmentation``.

    Every weight of ``model`` must be in the checkpoint with the same shape: the first missing or
    mismatching key is named (e.g. a ``decoder_layers`` or ``num_labels`` that differs from the
    checkpoint's ``DEC_LAYERS`` / ``NUM_CLASSES``); level counts that differ (RbA's Swin checkpoints read
    one level) name ``encoder_feature_levels`` / ``decoder_feature_levels`` (see
    :mod:`~synthrel_lightning.models.mask2former_levels`).
    """
    state = detectron2_to_transformers(read_detectron2_state_dict(path), str(path))
    target = model.state_dict()
    _check_feature_levels(state, target, path)
    for key, value in state.items():
        if key not in target:
            raise ValueError(f"{path}: checkpoint entry for {key!r} has no place in the model (is the config right?)")
        if tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(
                f"{path}: shape mismatch at {key!r}: checkpoint {tuple(value.shape)}, model {tuple(target[key].shape)}"
            )
    # transformers' Swin keeps a final norm the Mask2Former backbone never uses (it reads hidden_states_norms).
    unused = re.compile(r"swin\.layernorm\.(weight|bias)$")
    missing = [k for k in target if k not in state and not unused.search(k)]
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} weights of the model, first {missing[:3]}")
    model.load_state_dict(state, strict=False)
    return model


__all__ = [
    "detectron2_feature_levels",
    "detectron2_to_transformers",
    "load_detectron2_mask2former",
    "map_detectron2_key",
    "read_detectron2_state_dict",
]
