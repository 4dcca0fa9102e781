"""The binned pixel metric's exact fallback: keep the first scores, probe the bins, switch to a sort if needed.

A mixin of :class:`~synthrel_lightning.metrics.PixelOODMetrics` (binned mode): the first scores
are kept (the exact mode's states) until both classes were seen; then they are binned and the
resolution bound computed. Within ``tolerance`` they stay binned; otherwise the metric goes on
with the exact sort, warns once and says why in ``exact_fallback``. Past ``fallback_pixels`` kept
pixels it bins them and goes on binned. Every pixel is either in the histogram or in the kept
scores, never in both, so the states of several processes merge like the metric's own.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchmetrics.utilities.data import dim_zero_cat

from synthrel_lightning.metrics.functional import curve_counts_from_histogram, resolution_from_counts
from synthrel_lightning.metrics.score_bins import split_state

if TYPE_CHECKING:
    from torchmetrics import Metric as _MetricBase

    from synthrel_lightning.metrics.score_bins import BinLayout
else:
    _MetricBase = object


def keep_precision(scores: Tensor) -> Tensor:
    """float64 scores as they are, lower precisions as float32 (exact for float16 / bfloat16)."""
    return scores if scores.dtype == torch.float64 else scores.float()


class ExactFallback(_MetricBase):
    """Methods of the binned metric's exact fallback (see the module docstring)."""

    # States and settings of the metric that mixes this in (PixelOODMetrics).
    mode: str
    hist: Tensor
    scores: list[Tensor]  # a Tensor once synced across processes
    positives: list[Tensor]
    n_pos: Tensor
    n_neg: Tensor
    num_bins: int
    tolerance: float
    fallback_pixels: int
    exact_fallback: str | None
    _kept_mantissa: int
    _probe_pending: bool
    _fallback_active: bool

    if TYPE_CHECKING:

        def _update_binned(
            self, scores: Tensor, target: Tensor, valid: Tensor, mantissa: int | None = None
        ) -> None: ...

        def _ascending_counts(self) -> tuple[Tensor, Tensor, Tensor, BinLayout]: ...

    def _update_exact(self, scores: Tensor, target: Tensor, valid: Tensor) -> None:
        pos = target[valid] == 1
        n_pos = pos.sum()
        self.n_pos += n_pos
        self.n_neg += pos.numel() - n_pos
        self.scores.append(keep_precision(scores[valid]))
        self.positives.append(pos)

    def _drop_kept(self) -> None:
        self.scores, self.positives = [], []
        self.n_pos.zero_()
        self.n_neg.zero_()

    def _probe(self) -> None:
        """Until both classes were seen: switch to the exact path if the bins cannot resolve the scores so far."""
        kept = int(self.n_pos + self.n_neg)
        if self.fallback_pixels <= 0 or kept > self.fallback_pixels:
            self._probe_pending = False
            self._bin_kept_scores()
            return
        if int(self.n_pos) == 0 or int(self.n_neg) == 0:
            return  # keep the scores until both classes are there
        self._probe_pending = False
        if int(split_state(self.hist)[0].sum()) > 0:  # pixels already binned (e.g. forward()): stay binned
            self._bin_kept_scores()
            return
        scores, positives = dim_zero_cat(self.scores), dim_zero_cat(self.positives)
        self._update_binned(scores, positives.to(torch.uint8), torch.ones_like(positives), self._kept_mantissa)
        ordered, _, single, _ = self._ascending_counts()
        tps, fps, bins = curve_counts_from_histogram(ordered)
        bound = max(float(v) for v in resolution_from_counts(tps, fps, ~single[bins]).values())
        if bound <= self.tolerance:
            self._drop_kept()
            return
        default = self._defaults["hist"]
        assert isinstance(default, Tensor)  # the binned state's default is a tensor
        self.hist.copy_(default.to(self.hist.device))
        self._fallback_active = True
        self.exact_fallback = (
            f"the scores need finer bins than num_bins={self.num_bins} give (resolution bound {bound:.1e} > "
            f"tolerance {self.tolerance:g}: pixels of different scores share bins, e.g. with far-apart score "
            "clusters): exact sort while the set holds at most "
            f"fallback_pixels={self.fallback_pixels} pixels"
        )
        warnings.warn(f"{type(self).__name__}: switched to the exact path: {self.exact_fallback}", stacklevel=4)

    def _end_fallback(self) -> None:
        """Too many pixels for the exact fallback: bin the kept scores and go on binned."""
        self._bin_kept_scores()
        self._fallback_active = False
        self.exact_fallback = f"{self.exact_fallback}; the set grew past that, so the metric is binned again"
        warnings.warn(f"{type(self).__name__}: {self.exact_fallback}", stacklevel=3)

    def _bin_kept_scores(self) -> None:
        scores, positives = dim_zero_cat(self.scores), dim_zero_cat(self.positives)
        self._update_binned(scores, positives.to(torch.uint8), torch.ones_like(positives), self._kept_mantissa)
        self._drop_kept()

    def _settled(self) -> str:
        """``"exact"`` or ``"binned"``: which state holds the (synced) pixels; a binned one absorbs kept scores."""
        if self.mode != "binned" or int(self.n_pos + self.n_neg) == 0:
            return self.mode
        if int(split_state(self.hist)[0].sum()) == 0:
            return "exact"
        self._bin_kept_scores()  # processes disagreed on the fallback: bin every pixel
        return "binned"
