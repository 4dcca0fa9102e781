"""Order-preserving keys for float scores and the mergeable bin layouts of the binned pixel OOD metrics.

A float64 score goes to one of 8 segments by its sign and magnitude (``|s|`` in
``[0, 0.5)``, ``[0.5, 1)``, ``[1, 2)``, ``[2, inf)``) and is keyed by the float64 bit
pattern of its (exact) distance to the segment's centre (0 or 1): a log-scale key that
resolves probabilities saturating at either end of ``[0, 1]``. A :class:`BinLayout`
holds, per segment, a window of bins ``key >> e`` over the keys seen; layouts widen and
coarsen exactly, so the states of :class:`~synthrel_lightning.metrics.pixel.PixelOODMetrics`
built on different processes merge into the state one process would have built
(:func:`merge_states`).
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
HEADER = 2 + 2 * SEGMENTS  # e, window low keys, window high keys, finest input precision
MANTISSA_BITS = {torch.float64: 52, torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}


def _top_tables() -> tuple[Tensor, Tensor]:
    """Segment and centre of each value of a float64's top 12 bits (sign and exponent)."""
    exponent = torch.arange(2048)
    magnitude = (exponent - 1021).clamp(0, 3)  # |s| < 0.5, [0.5, 1), [1, 2), >= 2
    segment = torch.cat([4 + magnitude, 3 - magnitude])
    return segment, torch.tensor(CENTRE, dtype=torch.float64)[segment]


TOP_SEGMENT, TOP_CENTRE = _top_tables()


def _top32_tables() -> tuple[Tensor, Tensor]:
    """Segment and centre of each value of a float32's top 9 bits (sign and exponent)."""
    magnitude = (torch.arange(256) - 125).clamp(0, 3)
    segment = torch.cat([4 + magnitude, 3 - magnitude])
    return segment, torch.tensor(CENTRE, dtype=torch.float32)[segment]


TOP32_SEGMENT, TOP32_CENTRE = _top32_tables()
INT32_MAX = (1 << 31) - 1


def score_keys(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Top 12 bits (0..4095) and key (float64 bits of the distance to the centre) of each score, flat."""
    x = scores.reshape(-1)
    x = x if x.dtype == torch.float64 else x.double()
    top = (x.view(torch.int64) >> 52) & 4095
    d = x.abs().sub_(TOP_CENTRE.to(x.device).index_select(0, top)).abs_()
    return top, d.view(torch.int64)


def float_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


def bits_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def ordered(value: float) -> int:
    """An integer that orders float64 values like the values (-0.0 just below +0.0)."""
    return float_bits(value) if math.copysign(1.0, value) > 0 else -float_bits(-value) - 1


def unordered(index: int) -> float:
    return bits_float(index) if index >= 0 else -bits_float(-index - 1)


class BinLayout:
    """Bin windows of the 8 segments at level ``e`` (bin = key >> e); an empty window has low > high."""

    def __init__(self, e: int, low: list[int], high: list[int], mantissa: int = 0) -> None:
        self.e, self.low, self.high = int(e), [int(v) for v in low], [int(v) for v in high]
        self.mantissa = int(mantissa)  # mantissa bits of the most precise input dtype seen
        self.width = [h - lo + 1 if h >= lo else 0 for lo, h in zip(self.low, self.high)]
        self.offset, total = [], 0
        for w in self.width:  # each segment: one bin for d = 0, then its window
            self.offset.append(total)
            total += 1 + w
        self.total = total

    @classmethod
    def empty(cls) -> BinLayout:
        return cls(0, [INT64_MAX] * SEGMENTS, [-1] * SEGMENTS)

    @classmethod
    def from_header(cls, header: list[int]) -> BinLayout:
        return cls(header[0], header[1 : 1 + SEGMENTS], header[1 + SEGMENTS : 1 + 2 * SEGMENTS], header[-1])

    def header(self) -> list[int]:
        return [self.e, *self.low, *self.high, self.mantissa]

    def coarsened(self, e: int) -> BinLayout:
        k = e - self.e
        return BinLayout(e, [v >> k for v in self.low], [v >> k for v in self.high], self.mantissa)

    def union(self, other: BinLayout) -> BinLayout:
        e = max(self.e, other.e)
        a, b = self.coarsened(e), other.coarsened(e)
        low = [min(x, y) for x, y in zip(a.low, b.low)]
        return BinLayout(e, low, [max(x, y) for x, y in zip(a.high, b.high)], max(self.mantissa, other.mantissa))

    def rounded(self, chunk: int) -> BinLayout:
        """The windows widened outwards to multiples of ``2**chunk`` bins (so that they move rarely)."""
        low = [(v >> chunk) << chunk for v in self.low]
        high = [((h >> chunk) << chunk) + (1 << chunk) - 1 if h >= lo else h for lo, h in zip(self.low, self.high)]
        return BinLayout(self.e, low, high, self.mantissa)

    def fitted(self, num_bins: int) -> BinLayout:
        """The finest coarsening of this layout, windows rounded to chunks, that fits in ``num_bins`` bins."""
        chunk = max(0, num_bins.bit_length() - 11)  # 1024-bin chunks at the default 2**20 bins
        layout = self.rounded(chunk)
        while layout.total > num_bins:
            layout = layout.coarsened(layout.e + 1).rounded(chunk)
        return layout

    def storage_map(self, new: BinLayout, device: torch.device) -> tuple[Tensor, Tensor]:
        """(old storage indices, new storage indices) of every bin of this layout in ``new`` (a coarsening)."""
        k = new.e - self.e
        src, dst = [], []
        for s in range(SEGMENTS):
            src.append(torch.tensor([self.offset[s]], device=device))
            dst.append(torch.tensor([new.offset[s]], device=device))
            if self.width[s]:
                q = torch.arange(self.low[s], self.high[s] + 1, device=device)
                src.append(torch.arange(self.width[s], device=device) + self.offset[s] + 1)
                dst.append((q >> k) - new.low[s] + new.offset[s] + 1)
        return torch.cat(src), torch.cat(dst)

    def move(self, counts: Tensor, new: BinLayout) -> Tensor:
        """``(2, num_bins)`` counts stored in this layout, stored in ``new`` (a widening or coarsening of it)."""
        moved = torch.zeros_like(counts)
        if new.e == self.e:  # windows only widened: shift each segment's block
            for s in range(SEGMENTS):
                moved[:, new.offset[s]] = counts[:, self.offset[s]]
                if self.width[s]:
                    begin = new.offset[s] + 1 + self.low[s] - new.low[s]
                    old = self.offset[s] + 1
                    moved[:, begin : begin + self.width[s]] = counts[:, old : old + self.width[s]]
            return moved
        src, dst = self.storage_map(new, counts.device)
        return moved.index_add_(1, dst, counts[:, src])

    def ascending_order(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Storage indices of the used bins in ascending score order, and which of them hold a single value."""
        parts, single = [], []
        for s in range(SEGMENTS):
            window = torch.arange(self.width[s], device=device) + self.offset[s] + 1
            centre = torch.tensor([self.offset[s]], device=device)
            parts += [centre, window] if ASCENDING[s] else [window.flip(0), centre]
            fine = self._single_valued(s, torch.arange(self.low[s], self.low[s] + self.width[s], device=device))
            fine = fine if ASCENDING[s] else fine.flip(0)
            ones = torch.ones_like(centre, dtype=torch.bool)
            single += [ones, fine] if ASCENDING[s] else [fine, ones]
        return torch.cat(parts), torch.cat(single)

    def _single_valued(self, segment: int, q: Tensor) -> Tensor:
        """Whether the window bins ``q`` of ``segment`` can hold only one value of the inputs' precision."""
        if self.e <= 52 - self.mantissa:  # a bin is narrower than the inputs' spacing everywhere
            return torch.ones_like(q, dtype=torch.bool)
        if CENTRE[segment] == 0.0 or self.e >= 52:
            return torch.zeros_like(q, dtype=torch.bool)
        # d = |s| - 1 or 1 - |s|: multiples of the spacing of |s| near 1, whatever the size of d
        spacing = -self.mantissa - (1 if segment in (2, 5) else 0)  # log2 of the spacing of |s|
        # a bin of d in [2**x, 2**(x + 1)) is 2**(x + e - 52) wide: single while x <= spacing + 52 - e
        first_too_wide = (spacing + 52 - self.e + 1 + 1023) << 52  # the key of 2**(x + 1)
        return q < (first_too_wide >> self.e) if first_too_wide > 0 else torch.zeros_like(q, dtype=torch.bool)

    @staticmethod
    def _rank(segment: int, centre: bool, q: int) -> tuple[int, int]:
        if centre:
            if segment == 3:  # -0.0 is +0.0
                segment = 4
            return segment, -1 if ASCENDING[segment] else INT64_MAX
        return segment, q if ASCENDING[segment] else -q

    def rank_of_key(self, segment: int, key: int) -> tuple[int, int]:
        """Position of a score's (segment, key) in ascending score order, as a comparable pair."""
        return self._rank(segment, key == 0, key >> self.e)

    def rank_of_storage(self, index: int) -> tuple[int, int]:
        """Position of the storage bin ``index`` in ascending score order, as a comparable pair."""
        for s in range(SEGMENTS):
            if index <= self.offset[s] + self.width[s]:
                return self._rank(s, index == self.offset[s], self.low[s] + index - self.offset[s] - 1)
        raise IndexError(index)


def segment_ranges(slot: Tensor, key: Tensor, segment: Tensor, empty: int) -> Tensor:
    """Per segment, the smallest non-zero and the largest key of the pixels in each slot: ``(low..., high...)``.

    ``slot`` (int64) indexes ``segment`` (the segment of each slot), one past its end for
    ignored pixels; ``empty`` (the dtype's max) marks a segment without keys. A key 0
    (a score at a segment centre) has a bin of its own, so windows start above it.
    """
    n = segment.numel()
    low = torch.full((n + 1,), empty, dtype=key.dtype, device=key.device)
    low.scatter_reduce_(0, slot, key, "amin")
    if bool((low[:n] == 0).any()):
        low.fill_(empty).scatter_reduce_(0, slot, torch.where(key > 0, key, empty), "amin")
    high = torch.full((n + 1,), -1, dtype=key.dtype, device=key.device)
    high.scatter_reduce_(0, slot, key, "amax")
    seg_low = torch.full((SEGMENTS,), empty, dtype=key.dtype, device=key.device)
    seg_high = torch.full((SEGMENTS,), -1, dtype=key.dtype, device=key.device)
    seg_low.scatter_reduce_(0, segment, low[:n], "amin")
    seg_high.scatter_reduce_(0, segment, high[:n], "amax")
    return torch.cat([seg_low, seg_high])


def split_state(state: Tensor) -> tuple[Tensor, list[int]]:
    num_bins = (state.numel() - HEADER) // 2
    return state[: 2 * num_bins].view(2, num_bins), state[2 * num_bins :].tolist()


def merge_states(states: Tensor) -> Tensor:
    """Merge stacked binned states ``(P, 2 * num_bins + header)`` into the state of all their scores."""
    states = states.reshape(states.shape[0], -1)
    num_bins = (states.shape[1] - HEADER) // 2
    parts = [split_state(state) for state in states]
    layouts = [BinLayout.from_header(header) for _, header in parts]
    merged = layouts[0]
    for layout in layouts[1:]:
        merged = merged.union(layout)
    merged = merged.fitted(num_bins)
    counts = torch.zeros(2, num_bins, dtype=torch.int64, device=states.device)
    for (hist, _), layout in zip(parts, layouts):
        counts += layout.move(hist, merged)
    header = torch.tensor(merged.header(), dtype=torch.int64, device=states.device)
    return torch.cat([counts.reshape(-1), header])
