"""Input checks shared by the loss terms (a leaf module: it imports nothing from this package)."""

from __future__ import annotations

import torch
from torch import Tensor

from synthrel_lightning.labels import OOD_ID, VOID_ID


def check_logits_target(logits: Tensor, target: Tensor, who: str) -> None:
    """Raise a clear error unless ``logits`` is (B,K,H,W) and ``target`` is (B,H,W) integer."""
    if logits.ndim != 4:
        raise ValueError(f"{who}: logits must be (B, K, H, W), got shape {tuple(logits.shape)}")
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"{who}: target shape {tuple(target.shape)} does not match logits "
            f"{tuple(logits.shape)}; expected (B, H, W) = {(logits.shape[0], *logits.shape[2:])}"
        )
    if target.dtype.is_floating_point:
        raise TypeError(f"{who}: target must be an integer tensor of train ids, got {target.dtype}")


def check_scores_target(scores: Tensor, target: Tensor, who: str) -> None:
    """Raise a clear error unless ``scores`` is (B,K,h,w), ``target`` (B,H,W) integer of valid ids.

    Unlike :func:`check_logits_target` the spatial sizes may differ: terms on
    mask-classification scores upsample their score map to the target's size.
    """
    if scores.ndim != 4:
        raise ValueError(f"{who}: class scores must be (B, K, h, w), got shape {tuple(scores.shape)}")
    if target.ndim != 3 or target.shape[0] != scores.shape[0]:
        raise ValueError(
            f"{who}: target shape {tuple(target.shape)} does not match class scores {tuple(scores.shape)}; "
            f"expected (B, H, W) with B = {scores.shape[0]}"
        )
    if target.dtype.is_floating_point:
        raise TypeError(f"{who}: target must be an integer tensor of train ids, got {target.dtype}")
    check_target_ids(target, int(scores.shape[1]), who)


def invalid_ids(target: Tensor, num_classes: int) -> Tensor:
    """Boolean mask of target values other than 0..K-1, :data:`OOD_ID` and :data:`VOID_ID`."""
    return ~(((target >= 0) & (target < num_classes)) | (target == OOD_ID) | (target == VOID_ID))


def check_target_ids(target: Tensor, num_classes: int, who: str) -> None:
    """Raise a clear ``ValueError`` if ``target`` holds values other than 0..K-1, 254 and 255 (one host sync)."""
    bad = invalid_ids(target, num_classes)
    if bool(bad.any()):
        values = sorted(target[bad].unique().tolist())[:10]
        raise ValueError(
            f"{who}: target holds values {values} outside 0..{num_classes - 1}, {OOD_ID} (OOD) and {VOID_ID} (void)"
        )


def finite_mean(values: Tensor, logits: Tensor) -> Tensor:
    """Mean of ``values``, or a zero that keeps the graph when ``values`` is empty."""
    if values.numel() == 0:
        return logits.sum() * 0.0
    return values.mean()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask`` without a host sync; an exact, graph-keeping zero for an empty mask."""
    # torch.where, not a product with the mask: masked-out entries never reach the result or its gradient.
    count = mask.sum().clamp_min(1).to(values.dtype)
    return torch.where(mask, values, 0.0).sum() / count


__all__ = [
    "check_logits_target",
    "check_scores_target",
    "check_target_ids",
    "finite_mean",
    "invalid_ids",
    "masked_mean",
]
