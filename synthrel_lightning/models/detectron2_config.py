"""A detectron2 Mask2Former configuration (the ``config.yaml`` RbA ships with a checkpoint) as Mask2FormerConfig values.

The keys read are those of the original code's ``add_maskformer2_config`` / ``add_swin_config``
(github.com/facebookresearch/Mask2Former ``mask2former/config.py``, which RbA,
github.com/NazirNayal8/RbA, extends) and the way ``MSDeformAttnPixelDecoder`` and
``MultiScaleMaskedTransformerDecoder`` use them. Only Swin backbones map onto transformers'
Mask2Former; anything else is refused, naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: detectron2's feature names for Swin's four stages, finest first.
SWIN_FEATURES = ("res2", "res3", "res4", "res5")


def _get(cfg: Mapping[str, Any], dotted: str, source: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"{source}: missing {dotted} (expected a detectron2 Mask2Former config.yaml)")
        node = node[part]
    return node


def mask2former_config_from_detectron2(
    cfg: Mapping[str, Any], source: str = "config", decoder_feature_levels: int | None = None
) -> dict[str, Any]:
    """``Mask2FormerConfig`` keyword arguments (with ``num_labels`` and the level counts) of a detectron2 config.

    ``encoder_feature_levels`` is ``len(SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES)``;
    ``decoder_feature_levels`` defaults to the same count, as RbA's code hands its transformer decoder
    (the original Mask2Former code: 3; give it for such a checkpoint).
    """

    def get(key: str) -> Any:
        return _get(cfg, "MODEL." + key, source)

    if get("BACKBONE.NAME") != "D2SwinTransformer":
        raise ValueError(
            f"{source}: MODEL.BACKBONE.NAME is {get('BACKBONE.NAME')!r}; transformers' Mask2Former takes Swin "
            "backbones only (D2SwinTransformer)"
        )
    if get("SEM_SEG_HEAD.PIXEL_DECODER_NAME") != "MSDeformAttnPixelDecoder":
        raise ValueError(f"{source}: MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME must be MSDeformAttnPixelDecoder")
    in_features = list(get("SEM_SEG_HEAD.IN_FEATURES"))
    if in_features != list(SWIN_FEATURES) or list(get("SWIN.OUT_FEATURES")) != list(SWIN_FEATURES):
        raise ValueError(
            f"{source}: MODEL.SEM_SEG_HEAD.IN_FEATURES and SWIN.OUT_FEATURES must be {list(SWIN_FEATURES)}"
        )
    encoder_in = list(get("SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES"))
    if not encoder_in or sorted(encoder_in) != list(SWIN_FEATURES[-len(encoder_in) :]):
        raise ValueError(
            f"{source}: MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES {encoder_in} must be the "
            "coarsest levels (e.g. [res5] or [res3, res4, res5])"
        )
    if int(get("SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS")) != 4:
        raise ValueError(f"{source}: DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS must be 4 (transformers' Mask2Former)")
    swin = {
        "model_type": "swin",
        "image_size": int(get("SWIN.PRETRAIN_IMG_SIZE")),
        "patch_size": int(get("SWIN.PATCH_SIZE")),
        "embed_dim": int(get("SWIN.EMBED_DIM")),
        "depths": [int(d) for d in get("SWIN.DEPTHS")],
        "num_heads": [int(h) for h in get("SWIN.NUM_HEADS")],
        "window_size": int(get("SWIN.WINDOW_SIZE")),
        "mlp_ratio": float(get("SWIN.MLP_RATIO")),
        "qkv_bias": bool(get("SWIN.QKV_BIAS")),
        "drop_path_rate": float(get("SWIN.DROP_PATH_RATE")),
        "hidden_dropout_prob": float(get("SWIN.DROP_RATE")),
        "attention_probs_dropout_prob": float(get("SWIN.ATTN_DROP_RATE")),
        "use_absolute_embeddings": bool(get("SWIN.APE")),
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    }
    levels = len(encoder_in)
    return {
        "backbone_config": swin,
        "num_labels": int(get("SEM_SEG_HEAD.NUM_CLASSES")),
        "feature_size": int(get("SEM_SEG_HEAD.CONVS_DIM")),
        "mask_feature_size": int(get("SEM_SEG_HEAD.MASK_DIM")),
        "hidden_dim": int(get("MASK_FORMER.HIDDEN_DIM")),
        "encoder_layers": int(get("SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS")),
        "encoder_feedforward_dim": 1024,  # MSDeformAttnPixelDecoder.from_config: fixed at 1024
        "common_stride": int(get("SEM_SEG_HEAD.COMMON_STRIDE")),
        "decoder_layers": int(get("MASK_FORMER.DEC_LAYERS")),
        "num_queries": int(get("MASK_FORMER.NUM_OBJECT_QUERIES")),
        "num_attention_heads": int(get("MASK_FORMER.NHEADS")),
        "dim_feedforward": int(get("MASK_FORMER.DIM_FEEDFORWARD")),
        "dropout": float(get("MASK_FORMER.DROPOUT")),
        "pre_norm": bool(get("MASK_FORMER.PRE_NORM")),
        "enforce_input_projection": bool(get("MASK_FORMER.ENFORCE_INPUT_PROJ")),
        "use_auxiliary_loss": bool(get("MASK_FORMER.DEEP_SUPERVISION")),
        "no_object_weight": float(get("MASK_FORMER.NO_OBJECT_WEIGHT")),
        "class_weight": float(get("MASK_FORMER.CLASS_WEIGHT")),
        "mask_weight": float(get("MASK_FORMER.MASK_WEIGHT")),
        "dice_weight": float(get("MASK_FORMER.DICE_WEIGHT")),
        "train_num_points": int(get("MASK_FORMER.TRAIN_NUM_POINTS")),
        "oversample_ratio": float(get("MASK_FORMER.OVERSAMPLE_RATIO")),
        "importance_sample_ratio": float(get("MASK_FORMER.IMPORTANCE_SAMPLE_RATIO")),
        "encoder_feature_levels": levels,
        "decoder_feature_levels": int(decoder_feature_levels) if decoder_feature_levels is not None else levels,
    }


def is_detectron2_config(cfg: Any) -> bool:
    """Whether a parsed YAML/JSON mapping is a detectron2 configuration (a top-level ``MODEL`` section)."""
    return isinstance(cfg, Mapping) and isinstance(cfg.get("MODEL"), Mapping)


__all__ = ["is_detectron2_config", "mask2former_config_from_detectron2"]
