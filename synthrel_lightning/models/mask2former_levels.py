"""Mask2Former with a chosen number of feature levels in its pixel decoder and transformer decoder.

transformers' Mask2Former always feeds three backbone levels (res3-res5) to the deformable encoder
of its pixel decoder and hands three scales to the masked-attention transformer decoder. The
original code (github.com/facebookresearch/Mask2Former, ``MSDeformAttnPixelDecoder``) takes the
encoder's levels from ``MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES``; RbA's Swin
models (github.com/NazirNayal8/RbA) set it to ``[res5]``, and RbA's code then also hands the
transformer decoder that many scales (its ``maskformer_num_feature_levels`` and the decoder's
``num_feature_levels`` are ``len(DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES)``; the original code
keeps three).

With ``n`` encoder levels the pixel decoder computes, as the original code does:

- the encoder reads the ``n`` coarsest backbone features (1x1 conv + GroupNorm each, coarsest first),
  with a level embedding per level, and its output is split back into ``n`` maps;
- FPN levels are added for the finer features down to ``common_stride`` (``log2(min encoder stride)
  - log2(common_stride)`` of them; one for res3-res5, three for res5 alone): lateral 1x1 conv + GN,
  plus the bilinearly upsampled previous level, then a 3x3 conv + GN + ReLU;
- the mask features are the 1x1 projection of the finest map; the transformer decoder receives the
  first ``decoder_levels`` maps (coarsest first).

Parameter names are transformers' (``level_embed``, ``input_projections.i``, ``encoder.layers.i``,
``adapter_j``/``layer_j``, ``mask_projection``), so a detectron2 checkpoint maps onto them by the same
rules whatever the level count.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoder,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerPixelDecoderEncoderOnly,
    Mask2FormerPixelDecoderOutput,
    Mask2FormerSinePositionEmbedding,
    Mask2FormerTransformerModule,
)

#: Deformable-attention sampling points per head and level (Mask2Former's
#: ``DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS``, fixed at 4 in its pixel decoder and in transformers).
N_POINTS = 4


def feature_levels(config: Any) -> tuple[int, int]:
    """``(encoder_feature_levels, decoder_feature_levels)`` of a Mask2Former config (3 and 3 when unset).

    An unset ``decoder_feature_levels`` equals the encoder's, as in RbA's code.
    """
    encoder = getattr(config, "encoder_feature_levels", None)
    encoder = 3 if encoder is None else int(encoder)
    decoder = getattr(config, "decoder_feature_levels", None)
    return encoder, int(decoder) if decoder is not None else encoder


class LevelsPixelDecoder(Mask2FormerPixelDecoder):
    """transformers' ``Mask2FormerPixelDecoder`` with ``encoder_levels`` deformable-encoder levels.

    Args:
        config: the model's ``Mask2FormerConfig`` (``feature_size``, ``mask_feature_size``,
            ``feature_strides``, ``common_stride``, ``encoder_layers``, ``num_attention_heads``).
        feature_channels: channels of the backbone features, finest first.
        encoder_levels: how many of the coarsest backbone features the deformable encoder reads.
        decoder_levels: how many maps (coarsest first) go to the transformer decoder.
    """

    def __init__(
        self, config: Mask2FormerConfig, feature_channels: list[int], encoder_levels: int, decoder_levels: int
    ):
        # The parent's constructor builds three levels; this one builds the same modules for any count.
        nn.Module.__init__(self)
        strides = list(config.feature_strides)
        if not 1 <= encoder_levels <= len(feature_channels):
            raise ValueError(
                f"encoder_feature_levels={encoder_levels}: expected 1..{len(feature_channels)} (the backbone's levels)"
            )
        if len(strides) != len(feature_channels):
            raise ValueError(
                f"feature_strides {strides} do not match the backbone's {len(feature_channels)} feature levels"
            )
        self.config = config
        feature_dim = config.feature_size
        self.position_embedding = Mask2FormerSinePositionEmbedding(
            num_position_features=feature_dim // 2, normalize=True
        )
        self.num_feature_levels = encoder_levels
        self.transformer_feature_strides = strides[-encoder_levels:]
        self.feature_channels = list(feature_channels)
        self.level_embed = nn.Parameter(torch.empty(encoder_levels, feature_dim))
        self.input_projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, feature_dim, kernel_size=1), nn.GroupNorm(32, feature_dim))
            for c in feature_channels[-encoder_levels:][::-1]
        )
        self.encoder = Mask2FormerPixelDecoderEncoderOnly(config)
        for layer in self.encoder.layers:
            layer.self_attn = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(
                embed_dim=feature_dim, num_heads=config.num_attention_heads, n_levels=encoder_levels, n_points=N_POINTS
            )
        self.mask_projection = nn.Conv2d(feature_dim, config.mask_feature_size, kernel_size=1)
        self.common_stride = config.common_stride
        self.num_fpn_levels = int(np.log2(min(self.transformer_feature_strides)) - np.log2(self.common_stride))
        if not 1 <= decoder_levels <= encoder_levels + self.num_fpn_levels:
            raise ValueError(
                f"decoder_feature_levels={decoder_levels}: expected 1..{encoder_levels + self.num_fpn_levels} (the "
                f"pixel decoder's {encoder_levels} encoder and {self.num_fpn_levels} FPN maps)"
            )
        self.num_output_levels = decoder_levels
        lateral, output = [], []
        for idx, channels in enumerate(self.feature_channels[: self.num_fpn_levels]):
            lateral_conv = nn.Sequential(
                nn.Conv2d(channels, feature_dim, kernel_size=1, bias=False), nn.GroupNorm(32, feature_dim)
            )
            output_conv = nn.Sequential(
                nn.Conv2d(feature_dim, feature_dim, kernel_size=3, padding=1, bias=False),
                nn.GroupNorm(32, feature_dim),
                nn.ReLU(),
            )
            self.add_module(f"adapter_{idx + 1}", lateral_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral.append(lateral_conv)
            output.append(output_conv)
        # coarse to fine, as the forward walks them
        self.lateral_convolutions = lateral[::-1]
        self.output_convolutions = output[::-1]

    def forward(
        self,
        features: list[Tensor],
        encoder_outputs: Any = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Mask2FormerPixelDecoderOutput:
        """Mask features (finest map, projected) and the ``decoder_levels`` coarsest maps for the transformer."""
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        sources = [proj(x) for proj, x in zip(self.input_projections, features[::-1][: self.num_feature_levels])]
        shapes = [(int(s.shape[2]), int(s.shape[3])) for s in sources]
        flat = torch.cat([s.flatten(2).transpose(1, 2) for s in sources], 1)
        pos = torch.cat(
            [
                self.position_embedding(s.shape, s.device, s.dtype).flatten(2).transpose(1, 2)
                + self.level_embed[i].view(1, 1, -1)
                for i, s in enumerate(sources)
            ],
            1,
        )
        padding = torch.zeros(flat.shape[:2], dtype=torch.bool, device=flat.device)
        starts = [0]
        for h, w in shapes[:-1]:
            starts.append(starts[-1] + h * w)
        valid_ratios = torch.ones(flat.shape[0], len(shapes), 2, dtype=flat.dtype, device=flat.device)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                inputs_embeds=flat,
                attention_mask=padding,
                position_embeddings=pos,
                spatial_shapes_list=shapes,
                level_start_index=torch.tensor(starts, dtype=torch.long, device=flat.device),
                valid_ratios=valid_ratios,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        memory = encoder_outputs.last_hidden_state
        batch = memory.shape[0]
        maps = [
            part.transpose(1, 2).reshape(batch, -1, h, w)
            for part, (h, w) in zip(torch.split(memory, [h * w for h, w in shapes], dim=1), shapes)
        ]
        for feature, lateral_conv, output_conv in zip(
            features[: self.num_fpn_levels][::-1], self.lateral_convolutions, self.output_convolutions
        ):
            current = lateral_conv(feature)
            up = nn.functional.interpolate(maps[-1], size=current.shape[-2:], mode="bilinear", align_corners=False)
            maps.append(output_conv(current + up))
        return Mask2FormerPixelDecoderOutput(
            mask_features=self.mask_projection(maps[-1]),
            # transformers annotates this as tuple[Tensor] (one element) for a tuple of any length
            multi_scale_features=tuple(maps[: self.num_output_levels]),  # type: ignore[arg-type]
            attentions=encoder_outputs.attentions,
        )


def _set_decoder_levels(module: Mask2FormerTransformerModule, config: Mask2FormerConfig, levels: int) -> None:
    """The transformer decoder's per-scale input projections and level embedding, for ``levels`` scales."""
    hidden = config.hidden_dim
    module.num_feature_levels = levels
    module.decoder.num_feature_levels = levels
    module.input_projections = nn.ModuleList(
        nn.Conv2d(config.feature_size, hidden, kernel_size=1)
        if config.feature_size != hidden or config.enforce_input_projection
        else nn.Sequential()
        for _ in range(levels)
    )
    module.level_embed = nn.Embedding(levels, hidden)


def _init_new(model: Mask2FormerForUniversalSegmentation, modules: list[nn.Module]) -> None:
    """Random initialization of rebuilt modules, as transformers initializes the originals."""
    subs = [sub for top in modules for sub in top.modules()]
    for sub in subs:
        if isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight)
        elif isinstance(sub, nn.Conv2d):
            nn.init.xavier_uniform_(sub.weight, gain=model.config.init_xavier_std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, (nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=model.config.init_std)
            nn.init.zeros_(sub.bias)
    for sub in subs:  # after the generic rules, which would overwrite these
        if isinstance(sub, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
            _init_deformable(sub)
        elif isinstance(sub, LevelsPixelDecoder):
            nn.init.normal_(sub.level_embed)


def _init_deformable(attn: Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention) -> None:
    """Deformable DETR's initialization (sampling offsets on a ring of radius 1..n_points)."""
    nn.init.zeros_(attn.sampling_offsets.weight)
    thetas = torch.arange(attn.n_heads, dtype=torch.float32) * (2.0 * math.pi / attn.n_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(attn.n_heads, 1, 1, 2)
    grid = grid.repeat(1, attn.n_levels, attn.n_points, 1) * torch.arange(1, attn.n_points + 1).view(1, 1, -1, 1)
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(grid.reshape(-1))
    nn.init.zeros_(attn.attention_weights.weight)
    nn.init.zeros_(attn.attention_weights.bias)
    nn.init.xavier_uniform_(attn.value_proj.weight)
    nn.init.zeros_(attn.value_proj.bias)
    nn.init.xavier_uniform_(attn.output_proj.weight)
    nn.init.zeros_(attn.output_proj.bias)


class Mask2FormerLevelsForUniversalSegmentation(Mask2FormerForUniversalSegmentation):
    """transformers' Mask2Former whose level counts come from its config.

    ``config.encoder_feature_levels`` (default 3) backbone levels enter the pixel decoder's deformable
    encoder and ``config.decoder_feature_levels`` (default: the encoder's) scales enter the transformer
    decoder. With 3 and 3 the model is transformers' own; RbA's Swin checkpoints have 1 and 1. The
    values are saved in ``config.json``, so ``from_pretrained`` rebuilds the same structure.
    """

    def __init__(self, config: Mask2FormerConfig) -> None:
        super().__init__(config)
        encoder, decoder = feature_levels(config)
        if (encoder, decoder) == (3, 3):
            return
        pixel = self.model.pixel_level_module
        pixel.decoder = LevelsPixelDecoder(config, list(pixel.encoder.channels), encoder, decoder)
        transformer = self.model.transformer_module
        _set_decoder_levels(transformer, config, decoder)
        _init_new(self, [pixel.decoder, transformer.input_projections, transformer.level_embed])


__all__ = ["LevelsPixelDecoder", "Mask2FormerLevelsForUniversalSegmentation", "feature_levels"]
