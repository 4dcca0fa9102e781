"""What a segmenter returns, identified once: per-pixel logits or mask classification."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.scores.protocol import OutputKind


def per_pixel_class_scores(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """``l_k = Σ_q softmax(c_q)[k] σ(m_q)`` (B,K,h,w), the no-object class dropped (Mask2Former semantic inference)."""
    probs = class_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqk,bqhw->bkhw", probs, mask_logits.sigmoid())


@dataclass
class MaskClassificationOutput:
    """Mask-classification outputs: per-query class logits (B,Q,K+1) and mask logits (B,Q,h,w).

    ``aux`` holds the (class_logits, mask_logits) of the auxiliary decoder layers, first to last;
    ``extra`` whatever else the model's own criterion needs (e.g. OneFormer's contrastive queries).
    ``padded_size`` is the (H, W) of the input the model saw, padded to its stride, and ``image_size``
    the (h, w) of the image in its top-left corner; the masks then cover the padded input. Without
    them the masks cover the image.
    """

    class_logits: Tensor
    mask_logits: Tensor
    aux: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    padded_size: tuple[int, int] | None = None

    def image_region(self, masks: Tensor) -> Tensor:
        """``masks`` (..., h', w') cut to the cells that cover the image (rounded up at the mask resolution)."""
        if self.image_size is None or self.padded_size is None:
            return masks
        mh = -(-self.image_size[0] * masks.shape[-2] // self.padded_size[0])
        mw = -(-self.image_size[1] * masks.shape[-1] // self.padded_size[1])
        return masks[..., :mh, :mw]

    def class_scores(self) -> Tensor:
        """Per-pixel class scores (B,K,h',w') of the last decoder layer at the mask resolution, over the image."""
        return per_pixel_class_scores(self.class_logits, self.image_region(self.mask_logits))

    def aux_class_scores(self) -> list[Tensor]:
        """Per-pixel class scores of each auxiliary decoder layer (mask resolution, over the image)."""
        return [per_pixel_class_scores(c, self.image_region(m)) for c, m in self.aux]

    def semantic_scores(self, size: tuple[int, int]) -> Tensor:
        """Per-pixel class scores (B,K,H,W) at ``size``, as Mask2Former's semantic inference computes them.

        The mask logits are upsampled (bilinear) to the padded input, ``l_k`` is taken there, the
        padding is cut off and the result resized to ``size`` when that differs from the image
        (Mask2Former's ``MaskFormer.forward`` and detectron2's ``sem_seg_postprocess``,
        github.com/facebookresearch/Mask2Former, as RbA runs it: github.com/NazirNayal8/RbA).
        Without a padded size the masks are upsampled to ``size`` directly.
        """
        if self.image_size is None or self.padded_size is None:
            masks = self.mask_logits
            if tuple(masks.shape[-2:]) != tuple(size):
                masks = F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)
            return per_pixel_class_scores(self.class_logits, masks)
        masks = F.interpolate(self.mask_logits, size=tuple(self.padded_size), mode="bilinear", align_corners=False)
        h, w = self.image_size
        scores = per_pixel_class_scores(self.class_logits, masks)[..., :h, :w]
        if (h, w) != tuple(size):
            scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
        return scores


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    keys = getattr(value, "keys", None)
    if callable(keys):
        return f"{type(value).__name__} with fields {sorted(map(str, keys()))}"
    return f"a {type(value).__name__}"


def identify_output(value: Any, who: str = "OODSegmenter") -> tuple[OutputKind, Tensor | MaskClassificationOutput]:
    """The output kind and normalised content of a segmenter's return value.

    Per-pixel: a (B,K,h,w) tensor, a dict with ``"out"`` (torchvision) or ``"logits"``, an object with
    ``.logits`` (transformers semantic-segmentation models). Mask classification: a
    :class:`MaskClassificationOutput` or an object with ``class_queries_logits`` and
    ``masks_queries_logits`` (transformers Mask2Former/OneFormer/MaskFormer).
    """
    if isinstance(value, MaskClassificationOutput):
        return "mask_classification", value
    if isinstance(value, Tensor):
        return "per_pixel", value
    get = value.get if isinstance(value, dict) else (lambda k: getattr(value, k, None))
    cls, masks = get("class_queries_logits"), get("masks_queries_logits")
    if isinstance(cls, Tensor) and isinstance(masks, Tensor):
        aux_raw = get("auxiliary_logits") or get("auxiliary_predictions") or []
        aux = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in aux_raw]
        return "mask_classification", MaskClassificationOutput(cls, masks, aux)
    for key in ("out", "logits"):
        found = get(key)
        if isinstance(found, Tensor):
            return "per_pixel", found
    raise TypeError(
        f"{who}: cannot identify the segmenter's output: it returned {_describe(value)}. Expected per-pixel logits "
        "(a (B, K, h, w) tensor, a dict with 'out' or 'logits', or an object with .logits) or mask-classification "
        "outputs (class_queries_logits (B, Q, K+1) and masks_queries_logits (B, Q, h, w))"
    )


__all__ = ["MaskClassificationOutput", "identify_output", "per_pixel_class_scores"]


def class_scores_at(output: Tensor | MaskClassificationOutput, size: tuple[int, int]) -> Tensor:
    """Per-pixel class scores (B,K,H,W) at ``size``: bilinear logits, or the semantic scores of mask classification."""
    if isinstance(output, MaskClassificationOutput):
        return output.semantic_scores(size)
    if output.shape[-2:] != size:
        output = F.interpolate(output, size=size, mode="bilinear", align_corners=False)
    return output
