"""Where synthetic objects go: square boxes on or touching the drivable area of a frame.

Two rules are implemented:

* POC-style (de Jorge et al., "Placing Objects in Context via Inpainting for
  Out-of-distribution Segmentation", ECCV 2024): the box overlaps the drivable area (road, sidewalk by default) by at
  least ``min_overlap`` of its area; with ``perspective`` the box side grows
  linearly with the row of its bottom edge, from the horizon (the top of the
  drivable area) to the bottom of the frame, so near objects are larger.
* Loiseau et al.'s rule (ECCV 2024, arXiv 2312.09231; the fallback): side ~ U[lo, hi] (scaled with the frame width),
  a context crop of ``context_scale`` x side centred on the box whose top edge is
  at least ``top_margin_frac`` x H, horizontal position uniform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from synthrel_lightning.synthesis.geometry import Box

__all__ = ["Placement", "PlacementSampler"]


@dataclass(frozen=True)
class Placement(Box):
    """A sampled square box (a :class:`Box`) with its context crop side, drivable overlap and the rule that made it."""

    context_side: int
    overlap: float
    rule: str  # "drivable" or "paper"

    @property
    def context(self) -> Box:
        """The square context crop centred on the box (before any shift into the frame)."""
        m = (self.context_side - self.side) // 2
        return Box(self.x0 - m, self.y0 - m, self.context_side)


class PlacementSampler:
    """Samples square object boxes from a ground-truth train-id map (deterministic given a Generator)."""

    def __init__(
        self,
        drivable_ids: Sequence[int] = (0, 1),
        min_overlap: float = 0.3,
        size_range: tuple[float, float] = (256, 512),
        reference_width: int = 2048,
        perspective: bool = True,
        size_jitter: float = 0.15,
        top_margin_frac: float = 0.25,
        context_scale: float = 1.5,
        max_tries: int = 20,
        fallback: Literal["paper", "none"] = "paper",
        label_stride: int | None = None,
    ) -> None:
        lo, hi = (float(v) for v in size_range)
        if not 0 < lo <= hi:
            raise ValueError(f"size_range must satisfy 0 < lo <= hi, got {size_range!r}")
        if not 0.0 <= min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap!r}")
        if not 0.0 <= top_margin_frac < 1.0:
            raise ValueError(f"top_margin_frac must be in [0, 1), got {top_margin_frac!r}")
        if context_scale < 1.0:
            raise ValueError(f"context_scale must be >= 1 (the crop contains the box), got {context_scale!r}")
        if fallback not in ("paper", "none"):
            raise ValueError(f"fallback must be 'paper' or 'none', got {fallback!r}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries!r}")
        self.drivable_ids = tuple(int(i) for i in drivable_ids)
        self.min_overlap = float(min_overlap)
        self.size_range = (lo, hi)
        self.reference_width = int(reference_width)
        self.perspective = bool(perspective)
        self.size_jitter = float(size_jitter)
        self.top_margin_frac = float(top_margin_frac)
        self.context_scale = float(context_scale)
        self.max_tries = int(max_tries)
        self.fallback = fallback
        self.label_stride = label_stride
        self.stats: dict[str, int] = {"drivable": 0, "paper": 0, "failed": 0}
        """How many placements each rule produced, and how many calls returned None."""

    # -- geometry helpers -------------------------------------------------------------
    def _sizes(self, width: int) -> tuple[float, float]:
        scale = width / self.reference_width
        return self.size_range[0] * scale, self.size_range[1] * scale

    def _limits(self, height: int, width: int) -> tuple[int, int]:
        """Top margin row and the largest side whose context crop fits below it."""
        top = int(np.ceil(self.top_margin_frac * height))
        max_side = int(min(height - top, width) / self.context_scale)
        return top, max_side

    def _ranges(self, side: int, height: int, width: int, top: int) -> tuple[int, int, int, int]:
        """Allowed [x0 min, x0 max] and [y0 min, y0 max] for a box of ``side``."""
        cs = int(round(self.context_scale * side))
        m = (cs - side) // 2
        x_lo, x_hi = m, width - (cs - m)
        y_lo, y_hi = top + m, height - (cs - m)
        return x_lo, max(x_lo, x_hi), y_lo, max(y_lo, y_hi)

    # -- sampling --------------------------------------------------------------------
    def sample(
        self, label: np.ndarray | None, rng: np.random.Generator, shape: tuple[int, int] | None = None
    ) -> Placement | None:
        """One box for a frame with train-id map ``label`` (or only ``shape`` = (H, W) for the paper's rule)."""
        if label is not None:
            label = np.asarray(label)
            if label.ndim != 2:
                raise ValueError(f"label must be a (H, W) train-id map, got shape {label.shape}")
            height, width = label.shape
        elif shape is not None:
            height, width = int(shape[0]), int(shape[1])
        else:
            raise ValueError("PlacementSampler.sample needs a label map or a shape=(H, W)")
        top, max_side = self._limits(height, width)
        if max_side < 1:
            self.stats["failed"] += 1
            return None
        if label is not None and self.drivable_ids:
            found = self._sample_drivable(label, rng, top, max_side)
            if found is not None:
                self.stats["drivable"] += 1
                return found
        if self.fallback == "paper":
            self.stats["paper"] += 1
            return self._sample_paper(height, width, rng, top, max_side)
        self.stats["failed"] += 1
        return None

    def _sample_paper(self, height: int, width: int, rng: np.random.Generator, top: int, max_side: int) -> Placement:
        lo, hi = self._sizes(width)
        side = int(np.clip(round(rng.uniform(lo, hi)), 1, max_side))
        x_lo, x_hi, y_lo, y_hi = self._ranges(side, height, width, top)
        x0 = int(rng.integers(x_lo, x_hi + 1))
        y0 = int(rng.integers(y_lo, y_hi + 1))
        return Placement(x0, y0, side, int(round(self.context_scale * side)), float("nan"), "paper")

    def _sample_drivable(
        self, label: np.ndarray, rng: np.random.Generator, top: int, max_side: int
    ) -> Placement | None:
        height, width = label.shape
        # A strided view keeps the per-frame cost small at 2048x1024; boxes are >> stride.
        stride = self.label_stride or max(1, width // 512)
        small = label[::stride, ::stride]
        drivable = np.isin(small, self.drivable_ids)
        rows, cols = np.nonzero(drivable)
        if rows.size == 0:
            return None
        # Summed-area table: the drivable fraction of any box in O(1).
        sat = np.zeros((small.shape[0] + 1, small.shape[1] + 1), dtype=np.int64)
        sat[1:, 1:] = drivable.cumsum(0).cumsum(1)
        horizon = max(float(rows.min() * stride), float(top))
        bottom = float(height - 1)
        lo, hi = self._sizes(width)
        for _ in range(self.max_tries):
            i = int(rng.integers(rows.size))
            r = rows[i] * stride + int(rng.integers(stride))
            c = cols[i] * stride + int(rng.integers(stride))
            if self.perspective:
                t = 0.0 if bottom <= horizon else float(np.clip((r - horizon) / (bottom - horizon), 0.0, 1.0))
                side_f = lo + t * (hi - lo)
                side_f *= 1.0 + self.size_jitter * rng.uniform(-1.0, 1.0)
            else:
                side_f = rng.uniform(lo, hi)
            side = int(np.clip(round(side_f), 1, max_side))
            x_lo, x_hi, y_lo, y_hi = self._ranges(side, height, width, top)
            # The anchor pixel is the bottom centre: objects stand on the ground.
            x0 = int(np.clip(c - side // 2, x_lo, x_hi))
            y0 = int(np.clip(r + 1 - side, y_lo, y_hi))
            sx0, sy0 = x0 // stride, y0 // stride
            sx1 = max(sx0 + 1, -(-(x0 + side) // stride))
            sy1 = max(sy0 + 1, -(-(y0 + side) // stride))
            sx1, sy1 = min(sx1, small.shape[1]), min(sy1, small.shape[0])
            inside = sat[sy1, sx1] - sat[sy0, sx1] - sat[sy1, sx0] + sat[sy0, sx0]
            overlap = float(inside) / float(max(1, (sy1 - sy0) * (sx1 - sx0)))
            if overlap >= self.min_overlap and inside > 0:
                return Placement(x0, y0, side, int(round(self.context_scale * side)), overlap, "drivable")
        return None

    def drivable_overlap(self, label: np.ndarray, placement: Box) -> float:
        """Exact fraction of the box's pixels whose train id is drivable (full resolution)."""
        return float(np.isin(np.asarray(label)[placement.slices], self.drivable_ids).mean())
