"""Input checks shared by the metrics (one device sync per batch when the input is good)."""

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
    # one sync: the target's range and whether the scores' sum is finite (it is when every score is, barring
    # an overflow, which only sends us to the exact check below)
    low, high = torch.aminmax(target.reshape(-1)) if target.numel() else (target.new_zeros(()), target.new_zeros(()))
    total = scores.sum(dtype=torch.float64) if scores.numel() else scores.new_zeros((), dtype=torch.float64)
    low, high, sum_finite = torch.stack([low.long(), high.long(), torch.isfinite(total).long()]).tolist()
    if low >= 0 and high <= 1:
        n_bad = 0
    elif 0 <= low and high <= 1023:  # small non-negative labels: count them in one pass
        counts = torch.bincount(target.reshape(-1).long(), minlength=max(high + 1, 2))
        n_bad = int(counts.sum() - counts[0] - counts[1] - (counts[ignore_index] if 1 < ignore_index <= high else 0))
    else:
        n_bad = int((((target < 0) | (target > 1)) & valid).sum())
    all_finite = bool(sum_finite) or bool(torch.isfinite(scores).all())
    if n_bad:
        bad_target = ((target < 0) | (target > 1)) & valid
        values = torch.unique(target[bad_target]).tolist()
        raise ValueError(
            f"{who}: target holds values {values[:20]} ({n_bad} pixels); expected only 0 (in-distribution), "
            f"1 (OOD) and {ignore_index} (ignored)"
        )
    if not all_finite:
        check_finite(
            scores, valid, who, "scores", hint="fix the score function (e.g. clamp logits, compute in float32)"
        )
    return target, valid


def _where(index: list[int]) -> str:
    if len(index) == 3:
        return f"batch item {index[0]}, row {index[1]}, column {index[2]}"
    return f"index {tuple(index)}"


def check_finite(
    values: Tensor, valid: Tensor | None, who: str, what: str, channel_dim: int | None = None, hint: str = ""
) -> None:
    """Raise a ValueError saying how many of ``values`` at ``valid`` pixels are NaN / infinite, and where.

    ``values`` has the shape of ``valid`` or, with ``channel_dim``, one more dimension
    (e.g. logits ``(B, K, H, W)`` with ``channel_dim=1`` against ``(B, H, W)``). Values at
    pixels outside ``valid`` are not checked. One device sync when everything is finite.
    """
    finite = torch.isfinite(values)
    pixel_ok = finite.all(dim=channel_dim) if channel_dim is not None else finite
    bad = ~pixel_ok if valid is None else ~pixel_ok & valid
    if not bool(bad.any()):
        return
    per_pixel = values.movedim(channel_dim, -1)[bad] if channel_dim is not None else values[bad]
    n_nan, n_inf, n_pixels = (int(x) for x in (per_pixel.isnan().sum(), per_pixel.isinf().sum(), bad.sum()))
    positions = torch.nonzero(bad)
    items = torch.unique(positions[:, 0]).tolist() if bad.ndim > 1 else []
    in_items = f" in batch item(s) {items[:10]}{' ...' if len(items) > 10 else ''}" if bad.ndim == 3 else ""
    raise ValueError(
        f"{who}: {n_nan + n_inf} of {values.numel()} {what} at counted pixels are NaN or infinite "
        f"({n_nan} NaN, {n_inf} infinite) at {n_pixels} pixel(s){in_items}; the first at "
        f"{_where(positions[0].tolist())}" + (f". {hint}" if hint else "")
    )
