"""Pixel masks and masked means shared by the loss terms."""

from __future__ import annotations

import torch
from torch import Tensor

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.losses.base import check_logits_target


def split_pixels(logits: Tensor, target: Tensor, who: str) -> tuple[Tensor, Tensor]:
    """Validate ``logits``/``target`` and return boolean masks (inlier, OOD) of shape (B,H,W).

    Inliers carry a train id below K; OOD pixels carry 254; void (255) is in neither.
    """
    check_logits_target(logits, target, who)
    inlier = (target >= 0) & (target < logits.shape[1])
    ood = target == OOD_ID
    bad = ~inlier & ~ood & (target != VOID_ID)
    if bool(bad.any()):
        raise ValueError(
            f"{who}: target holds values {sorted(target[bad].unique().tolist())[:10]} outside "
            f"0..{logits.shape[1] - 1}, {OOD_ID} (OOD) and {VOID_ID} (void)"
        )
    return inlier, ood


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; an exact zero that keeps the graph when the mask is empty.

    Uses ``torch.where`` rather than boolean indexing so that no host sync is needed and
    masked-out pixels (whatever their value) never reach the result or its gradient.
    """
    total = torch.where(mask, values, values.new_zeros(())).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)
