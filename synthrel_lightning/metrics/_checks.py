"""Input checks shared by the metrics (one device sync per batch at most)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_binary_inputs(scores: Tensor, target: Tensor, ignore_index: int, who: str) -> tuple[Tensor, Tensor]:
    """Validate an OOD score map and its 0/1/ignore target; return (target on the scores' device, valid mask)."""
    if not isinstance(scores, Tensor) or not isinstance(target, Tensor):
        raise ValueError(
            f"{who}: scores and target must be tensors, got {type(scores).__name__}, {type(target).__name__}"
        )
    if scores.shape != target.shape:
        raise ValueError(
            f"{who}: scores shape {tuple(scores.shape)} does not match target shape {tuple(target.shape)}; "
            "pass one score per target pixel"
        )
    if not scores.is_floating_point():
        raise ValueError(f"{who}: scores must be floating point, got {scores.dtype}")
    if target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"{who}: target must be an integer tensor with values 0, 1, {ignore_index}; got {target.dtype}"
        )
    target = target.to(scores.device)
    if target.dtype == torch.bool:
        target = target.to(torch.uint8)
    valid = target != ignore_index
    bad_target = ((target < 0) | (target > 1)) & valid
    n_bad, all_finite = torch.stack([bad_target.sum(), torch.isfinite(scores).all().long()]).tolist()
    if n_bad:
        values = torch.unique(target[bad_target]).tolist()
        raise ValueError(
            f"{who}: target holds values {values[:20]} ({n_bad} pixels); expected only 0 (in-distribution), "
            f"1 (OOD) and {ignore_index} (ignored)"
        )
    if not all_finite:
        n_nonfinite = int((valid & ~torch.isfinite(scores)).sum())
        if n_nonfinite:
            raise ValueError(
                f"{who}: {n_nonfinite} of {scores.numel()} scores at non-ignored pixels are NaN or infinite; "
                "fix the score function (e.g. clamp logits, compute in float32)"
            )
    return target, valid
