"""Order-preserving keys for float scores and the mergeable bin layout of the binned pixel OOD metrics.

A float64 score goes to one of 8 segments by its sign and magnitude (``|s|`` in
``[0, 0.5)``, ``[0.5, 1)``, ``[1, 2)``, ``[2, inf)``) and is keyed by the float64 bit
pattern of its (exact) distance ``d`` to the segment's centre (0 or 1): a log-scale key that
resolves probabilities saturating at either end of ``[0, 1]``.

Each segment is cut into groups, one per float64 exponent of ``d`` (the centre ``d = 0`` goes
with the subnormal distances, exponent 0). Every occupied group gets the same number of bins ``W`` and a level ``e``
of its own (bin = ``key >> e``) over a window fitted to the keys it has seen, so the
resolution is chosen per exponent range: a cluster of scores far from the others
(``1e6 + z`` beside ``z``) is resolved as finely as a cluster near 0. When more groups are
occupied than ``num_bins`` allows (only with small ``num_bins``), groups span ``2**k``
exponents.

The layout is a function of the lowest and highest key seen per (segment, exponent), the
state's header, and it only coarsens as they widen: states built in any order, batching or
process split merge exactly into the state one process would have built (:func:`merge_states`).
"""

from __future__ import annotations

import math
import struct

import torch
from torch import Tensor

SEGMENTS = 8  # segments in ascending score order
# ascending score <-> ascending key within the segment (else descending)
ASCENDING = (False, False, True, False, True, False, True, True)
CENTRE = (0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0)  # centre of |s| in each segment
INT64_MAX = (1 << 63) - 1
GROUPS = 2048  # per segment: one group per float64 exponent of d
FINE = SEGMENTS * GROUPS
HEADER = 2 * FINE + 1  # lowest and highest key seen per (segment, exponent), finest input precision
MANTISSA_BITS = {torch.float64: 52, torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
MIN_WIDTH = 16  # groups span more exponents (k > 0) rather than hold fewer bins than this
MAX_SPAN = 11  # 2**11 exponents: one group per segment


def _top_tables() -> tuple[Tensor, Tensor]:
    """Segment and centre of each value of a float64's top 12 bits (sign and exponent)."""
    exponent = torch.arange(2048)
    magnitude = (exponent - 1021).clamp(0, 3)  # |s| < 0.5, [0.5, 1), [1, 2), >= 2
    segment = torch.cat([4 + magnitude, 3 - magnitude])
    return segment, torch.tensor(CENTRE, dtype=torch.float64)[segment]


TOP_SEGMENT, TOP_CENTRE = _top_tables()
_ASCENDING = torch.tensor(ASCENDING)
_CENTRE_ONE = torch.tensor([c == 1.0 for c in CENTRE])


TOP_GROUP = TOP_SEGMENT * GROUPS


def score_keys(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Top 12 bits (0..4095) and key (float64 bits of the distance to the centre) of each score, flat."""
    x = scores.reshape(-1)
    x = x + 0.0 if x.dtype == torch.float64 else x.double().add_(0.0)  # -0.0 + 0.0 is +0.0: one score
    top = (x.view(torch.int64) >> 52) & 4095
    d = x.abs().sub_(TOP_CENTRE.to(x.device).index_select(0, top)).abs_()
    return top, d.view(torch.int64)


def fine_groups(top: Tensor, key: Tensor) -> Tensor:
    """Fine group of each key: ``segment * GROUPS`` plus the exponent of ``d`` (its key's top bits)."""
    return TOP_GROUP.to(key.device).index_select(0, top).add_(key >> 52)


def groups_and_keys(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Fine group (``segment * GROUPS`` + the exponent of ``d``) and key of each score, flat."""
    top, key = score_keys(scores)
    return fine_groups(top, key), key


def float_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


def bits_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def ordered(value: float) -> int:
    """An integer that orders float64 values like the values (-0.0 just below +0.0)."""
    return float_bits(value) if math.copysign(1.0, value) > 0 else -float_bits(-value) - 1


def unordered(index: int) -> float:
    return bits_float(index) if index >= 0 else -bits_float(-index - 1)


def group_ranks(fine: Tensor, k: int) -> Tensor:
    """Rank (ascending score order) of the group spanning ``2**k`` exponents that holds each fine group."""
    segment, coarse = fine // GROUPS, (fine % GROUPS) >> k
    return segment * GROUPS + torch.where(_ASCENDING.to(fine.device)[segment], coarse, GROUPS - 1 - coarse)


def _fit_levels(low: Tensor, high: Tensor, width: int, chunk: int) -> Tensor:
    """Per group, the smallest level ``e`` whose window (starting at a multiple of ``chunk``) holds ``low..high``.

    ``chunk`` is a power of two: with a smaller width (and chunk) or a wider range no smaller
    level fits, so levels only grow as the layout does.
    """
    e = torch.arange(64, device=low.device).unsqueeze(1)
    fits = (high.unsqueeze(0) >> e) - ((low.unsqueeze(0) >> e) & -chunk) < width
    return fits.int().argmax(0)  # e = 63 always fits: every key is below 2**63


def _three_bits(n: int) -> int:
    """``n`` rounded down to its 3 leading binary digits."""
    drop = max(0, n.bit_length() - 3)
    return (n >> drop) << drop


class BinLayout:
    """The occupied groups, in ascending score order, with their levels, windows and storage offsets.

    Built from the header's key ranges (``low``/``high`` per fine group, an empty one has
    ``high < 0``), the finest input precision and ``num_bins``; see the module docstring. No
    level is finer than the inputs' precision (``e >= 52 - mantissa``): every value of a coarser
    dtype is then the lowest key of its bin, so a later finer dtype refines its bins exactly.
    """

    def __init__(self, low: Tensor, high: Tensor, mantissa: int, num_bins: int) -> None:
        device = low.device
        self.mantissa, self.num_bins = int(mantissa), int(num_bins)
        fine = torch.nonzero(high >= 0).flatten()
        level = torch.zeros_like(fine)  # the level of each fine group's group, at the span reached so far
        for k in range(MAX_SPAN + 1):
            ranks, inverse = torch.unique(group_ranks(fine, k), return_inverse=True)
            width = _three_bits(self.num_bins // max(ranks.numel(), 1))  # changes only now and then
            chunk = 1 << max(0, (width // 16).bit_length() - 1)  # windows move by whole chunks
            lows = torch.full_like(ranks, INT64_MAX).scatter_reduce_(0, inverse, low[fine], "amin")
            highs = torch.full_like(ranks, -1).scatter_reduce_(0, inverse, high[fine], "amax")
            # a group is never finer than its parts were at a smaller span: the layout only coarsens
            floor = torch.zeros_like(ranks).scatter_reduce_(0, inverse, level, "amax")
            e = torch.maximum(_fit_levels(lows, highs, width, chunk), floor).clamp_(min=52 - self.mantissa)
            level = e[inverse]
            if width >= MIN_WIDTH or k == MAX_SPAN:
                break
        self.span, self.chunk = k, chunk
        self.ranks, self.e = ranks, e
        self.start = (lows >> e) & -chunk
        self.width = torch.full_like(ranks, width)
        self.base = torch.cumsum(self.width, 0) - self.width
        self.total = int(self.width.sum())
        self.ascending = _ASCENDING.to(device)[ranks // GROUPS]
        self._tables()

    def _tables(self) -> None:
        """Per (class, fine group) the storage index ``offset + sign * (key >> shift)``; class 2: ignored pixels.

        Every fine group of an occupied group has an entry (a bin's lowest key may lie in an
        exponent of its group that holds no score).
        """
        device = self.ranks.device
        offset = torch.where(self.ascending, self.base - self.start, self.base + self.width - 1 + self.start)
        sign = torch.where(self.ascending, 1, -1)
        every = torch.arange(FINE, device=device)
        ranks = group_ranks(every, self.span)
        group = torch.searchsorted(self.ranks, ranks).clamp_(max=max(self.ranks.numel() - 1, 0))
        member = (self.ranks[group] == ranks) if self.ranks.numel() else torch.zeros_like(every, dtype=torch.bool)
        fine, group = every[member], group[member]
        self.offset = torch.full((3 * FINE,), 2 * self.num_bins, dtype=torch.int64, device=device)
        self.sign = torch.zeros(3 * FINE, dtype=torch.int64, device=device)
        self.shift = torch.zeros(3 * FINE, dtype=torch.int64, device=device)
        for row in (0, 1):  # in-distribution counts, then OOD counts num_bins further
            self.offset[fine + row * FINE] = offset[group] + row * self.num_bins
            self.sign[fine + row * FINE] = sign[group]
            self.shift[fine + row * FINE] = self.e[group]

    @classmethod
    def from_header(cls, header: Tensor, num_bins: int) -> BinLayout:
        return cls(header[:FINE], header[FINE : 2 * FINE], int(header[-1]), num_bins)

    def same_bins(self, other: BinLayout) -> bool:
        """Whether ``other`` stores every bin where this layout does (only the inputs' precision may differ)."""
        mine, theirs = (self.ranks, self.e, self.start, self.width), (other.ranks, other.e, other.start, other.width)
        return all(torch.equal(a, b) for a, b in zip(mine, theirs))

    def storage_index(self, row: Tensor, key: Tensor) -> Tensor:
        """Storage index of keys in ``row = class * FINE + fine group`` (class 0 in-distribution, 1 OOD, 2 ignored).

        For a fine group of no occupied group the index is meaningless; outside its window, unclamped.
        """
        shift = self.shift.index_select(0, row)
        return self.offset.index_select(0, row).addcmul_(self.sign.index_select(0, row), key >> shift)

    def single_valued(self) -> Tensor:
        """Per storage bin: whether it can hold only one value of the inputs' precision."""
        coarse = torch.where(self.ascending, self.ranks % GROUPS, GROUPS - 1 - self.ranks % GROUPS)
        segment = self.ranks // GROUPS
        # d = |s| - 1 or 1 - |s|: multiples of the spacing of |s| near 1, whatever the size of d
        spacing = -self.mantissa - torch.isin(segment, segment.new_tensor([2, 5])).long()
        top_exponent = ((coarse + 1) << self.span) - 1 - 1023  # the largest exponent of d in the group
        single = self.e <= 52 - self.mantissa
        single |= _CENTRE_ONE.to(segment.device)[segment] & (top_exponent - 52 + self.e <= spacing)
        return torch.repeat_interleave(single, self.width)

    def rank_of_value(self, value: float, target: tuple[int, int]) -> tuple[int, int]:
        """Position of ``value`` in ascending score order, comparable with ``target`` (:meth:`rank_of_storage`'s)."""
        top, key = score_keys(torch.tensor([value], dtype=torch.float64, device=self.offset.device))
        fine = fine_groups(top, key)
        rank = int(group_ranks(fine, self.span))
        same = rank == target[0]
        return rank, int(self.storage_index(fine, key)) if same else 0

    def rank_of_storage(self, index: int) -> tuple[int, int]:
        """Position of the storage bin ``index`` in ascending score order."""
        group = int(torch.searchsorted(self.base, torch.tensor(index, device=self.base.device), right=True)) - 1
        return int(self.ranks[group]), index

    def move(self, counts: Tensor, new: BinLayout) -> Tensor:
        """``(2, num_bins)`` counts stored in this layout, stored in ``new`` (a coarsening of it)."""
        moved = torch.zeros_like(counts)
        if self._move_blocks(counts, new, moved):
            return moved
        used = torch.nonzero(counts[:, : self.total].sum(0)).flatten()
        if used.numel() == 0:
            return moved
        group = torch.searchsorted(self.base, used, right=True) - 1
        local = used - self.base[group]
        start = self.start[group]
        q = torch.where(self.ascending[group], start + local, start + self.width[group] - 1 - local)
        key = q << self.e[group]  # the lowest key of each bin: its bin in ``new`` holds the whole bin
        segment = self.ranks[group] // GROUPS
        fine = segment * GROUPS + (key >> 52)
        return moved.index_add_(1, new.storage_index(fine, key), counts[:, used])

    def _move_blocks(self, counts: Tensor, new: BinLayout, moved: Tensor) -> bool:
        """Where every group keeps its level and window start (groups added, widths changed): copy blocks."""
        if self.ranks.numel() == 0 or self.span != new.span:
            return self.ranks.numel() == 0
        position = torch.searchsorted(new.ranks, self.ranks).clamp_(max=new.ranks.numel() - 1)
        kept = new.ranks[position] == self.ranks
        if not bool((kept & (new.e[position] == self.e) & (new.start[position] == self.start)).all()):
            return False
        rows = zip(self.base.tolist(), self.width.tolist(), self.ascending.tolist(), position.tolist())
        new_base, new_width = new.base.tolist(), new.width.tolist()
        for base, width, ascending, j in rows:
            size = min(width, new_width[j])  # the scores seen lie in both windows
            source = base if ascending else base + width - size  # descending: counted from the window's end
            target = new_base[j] if ascending else new_base[j] + new_width[j] - size
            moved[:, target : target + size] = counts[:, source : source + size]
        return True


def empty_header() -> list[int]:
    return [INT64_MAX] * FINE + [-1] * FINE + [0]


def batch_ranges(row: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
    """Lowest and highest key per fine group of a batch's rows (see :meth:`BinLayout.storage_index`); empty: -1."""
    low = torch.full((3 * FINE,), INT64_MAX, dtype=torch.int64, device=key.device).scatter_reduce_(0, row, key, "amin")
    high = torch.full((3 * FINE,), -1, dtype=torch.int64, device=key.device).scatter_reduce_(0, row, key, "amax")
    return low[:FINE].minimum(low[FINE : 2 * FINE]), high[:FINE].maximum(high[FINE : 2 * FINE])


def split_state(state: Tensor) -> tuple[Tensor, Tensor]:
    """``(2, num_bins)`` counts and the header of a flat binned state."""
    num_bins = (state.numel() - HEADER) // 2
    return state[: 2 * num_bins].view(2, num_bins), state[2 * num_bins :]


def merge_states(states: Tensor) -> Tensor:
    """Merge stacked binned states ``(P, 2 * num_bins + header)`` into the state of all their scores."""
    states = states.reshape(states.shape[0], -1)
    num_bins = (states.shape[1] - HEADER) // 2
    parts = [split_state(state) for state in states]
    headers = torch.stack([header for _, header in parts])
    header = torch.cat([headers[:, :FINE].amin(0), headers[:, FINE : 2 * FINE].amax(0), headers[:, -1:].amax(0)])
    merged = BinLayout.from_header(header, num_bins)
    counts = torch.zeros(2, num_bins, dtype=torch.int64, device=states.device)
    for hist, part in parts:
        counts += BinLayout.from_header(part, num_bins).move(hist, merged)
    return torch.cat([counts.reshape(-1), header])
