"""32-bit binning of float32 scores: the counts and layout their float64 values get, in 4-byte arithmetic.

For a float32 distance ``d`` to the segment centre (exact in float32: Sterbenz' lemma near 1)
that is 0 or normal, the float64 key is ``key32 * 2**29 + 896 * 2**52`` (0 for 0). At a level
``29 <= e <= 59`` the bin ``key64 >> e`` is then ``(key32 >> (e - 29)) + 896 * 2**(52 - e)``, so
the storage index is an int32 affine function of ``key32 >> (e - 29)``. A batch whose scores
touch a group at another level, or hold subnormal float32 distances, is binned with 64-bit keys
instead (:mod:`synthrel_lightning.metrics.score_bins`); both give the same state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from synthrel_lightning.metrics.score_bins import FINE, GROUPS, INT64_MAX, TOP_CENTRE, TOP_SEGMENT, BinLayout

SHIFT = 29  # float64 minus float32 mantissa bits
EXPONENT_OFFSET = 896  # float64 minus float32 exponent bias
INT32_MAX = (1 << 31) - 1


def _tables() -> tuple[Tensor, Tensor]:
    """Fine group of each (score's top 9 bits, distance's float32 exponent), and the centre per top 9 bits."""
    top = torch.arange(512)
    exponent = top & 255  # a float32 of exponent e > 0 has the float64 exponent e + 896; 0 stays below 1
    top64 = ((top >> 8) << 11) | torch.where(exponent > 0, exponent + EXPONENT_OFFSET, 0)
    segment = TOP_SEGMENT.index_select(0, top64)
    d_exponent = torch.arange(256)
    group = segment.unsqueeze(1) * GROUPS + torch.where(d_exponent > 0, d_exponent + EXPONENT_OFFSET, 0)
    return group.reshape(-1).int(), TOP_CENTRE.index_select(0, top64).float()


GROUP32, CENTRE32 = _tables()


def float32_keys(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Fine group (int32) and float32 key (bits of the distance to the centre, int32) of each score, flat."""
    x = scores.reshape(-1).float().add(0.0)  # a copy; -0.0 + 0.0 is +0.0: one score
    top = (x.view(torch.int32) >> 23) & 511
    key = x.abs_().sub_(CENTRE32.to(x.device).index_select(0, top)).abs_().view(torch.int32)
    return GROUP32.to(x.device).index_select(0, (top << 8).bitwise_or_(key >> 23)), key


def ranges32(row: Tensor, key: Tensor) -> tuple[Tensor, Tensor] | None:
    """Per fine group the lowest and highest float64 key of a batch's rows; None with subnormal distances."""
    low = torch.full((3 * FINE,), INT32_MAX, dtype=torch.int32, device=key.device).scatter_reduce_(0, row, key, "amin")
    high = torch.full((3 * FINE,), -1, dtype=torch.int32, device=key.device).scatter_reduce_(0, row, key, "amax")
    low, high = low[:FINE].minimum(low[FINE : 2 * FINE]).long(), high[:FINE].maximum(high[FINE : 2 * FINE]).long()
    if bool((high[::GROUPS] > 0).any()):  # exponent-0 groups hold more than d = 0: subnormal distances
        return None
    constant = EXPONENT_OFFSET << 52
    low = torch.where(low > 0, (low << SHIFT) + constant, low).masked_fill_(low == INT32_MAX, INT64_MAX)
    return low, torch.where(high > 0, (high << SHIFT) + constant, high)


def storage_tables32(layout: BinLayout, touched: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """int32 ``(offset, sign, shift)`` per row for the fine groups ``touched`` by a batch; None if out of reach."""
    e = layout.shift[:FINE]
    needed = touched & (torch.arange(FINE, device=e.device) % GROUPS != 0)  # exponent 0 holds only d = 0 here
    if bool(((e < SHIFT) | (e > 59))[needed].any()):
        return None
    cached = getattr(layout, "_tables32", None)
    if cached is None:
        normal = (layout.shift >= SHIFT) & (layout.shift <= 59)
        normal &= torch.arange(3 * FINE, device=e.device) % GROUPS != 0  # d = 0 keeps its key 0
        fold = torch.where(normal, (EXPONENT_OFFSET << 52) >> layout.shift, 0)
        offset = (layout.offset + layout.sign * fold).clamp_(-INT32_MAX, INT32_MAX).int()
        cached = (offset, layout.sign.int(), (layout.shift - SHIFT).clamp_(0, 31).int())
        layout._tables32 = cached  # type: ignore[attr-defined]
    return cached
