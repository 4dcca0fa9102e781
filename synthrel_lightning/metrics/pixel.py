"""Dataset-level pixel OOD metrics (AUROC, AP, FPR95, best F1) with SegmentMeIfYouCan definitions.

Curves are built from dataset-level confusion counts over descending thresholds,
never averaged per batch or per frame:

* AUROC: trapezoid rule over the ROC points, starting at (0, 0).
* AP: ``sum_n (R_n - R_{n-1}) P_n`` (step sum, as ``sklearn.metrics.average_precision_score``).
* FPR95: FPR at the first (highest) threshold whose TPR >= 0.95.
* best F1 and its threshold: pixels with ``score >= best_f1_threshold`` are the
  predicted OOD pixels at the best F1.

Two modes:

``"exact"`` keeps every non-ignored score (a ``cat`` state) and sorts once in
``compute()``: the ground truth, for small sets.

``"binned"`` keeps two fixed histograms (in-distribution and OOD counts per score
bin, a ``sum`` state), so memory does not grow with the number of pixels, and then
computes exactly what the exact mode would on scores rounded to their bin. Bins:

* ``score_range=(lo, hi)``: ``num_bins`` equal-width bins on ``[lo, hi]``; scores
  outside are clamped into the end bins (exact only if the range covers the scores).
* ``score_range=None`` (default): order-preserving *float bins* that need no
  range: a score's bin is given by its sign, its binary exponent and the top
  mantissa bits of its float32 representation, i.e. a log-scale histogram with a
  constant relative bin width of ``2**-m`` over ``|score|`` in ``[2**-32, 2**32)``
  (``m = 13`` at the default ``num_bins = 2**20``: 0.012 % relative width). Scores
  of magnitude below ``2**-32`` share one bin around zero and larger ones are
  clamped to the end bins. It suits bounded (MSP, entropy) and unbounded (energy,
  max-logit) scores alike; only scores that live on a tiny interval far from zero
  (e.g. ``1000 + noise``) need ``score_range`` instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from synthrel_lightning.labels import VOID_ID
from synthrel_lightning.metrics._checks import check_binary_inputs
from synthrel_lightning.metrics.functional import (
    best_f1,
    binary_curve_metrics,
    binary_ood_metrics,
    curve_counts_from_histogram,
    curve_counts_from_scores,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_EXP_WINDOW = 32  # float bins cover |score| in [2**-32, 2**32)
_F32_MANTISSA = 23
_F32_BIAS = 127


class NotComputableError(ValueError):
    """Raised by ``compute()`` when the data seen so far has no OOD or no in-distribution pixel."""


def _bits_to_float(bits: int) -> float:
    """The float32 value with the given (non-negative) bit pattern."""
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32).item())


def pixel_ood_metrics(scores: Tensor, target: Tensor, ignore_index: int = VOID_ID) -> dict[str, Tensor]:
    """Exact (sort-based) AUROC, AP, FPR95, best F1 and its threshold over all non-ignored pixels."""
    target, valid = check_binary_inputs(scores, target, ignore_index, "pixel_ood_metrics")
    return _exact(scores[valid].float(), target[valid] == 1, "pixel_ood_metrics")


def _exact(scores: Tensor, positive: Tensor, who: str) -> dict[str, Tensor]:
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.numel():
        raise NotComputableError(
            f"{who}: pixel OOD metrics need OOD and in-distribution pixels; got {n_pos} OOD and "
            f"{positive.numel() - n_pos} in-distribution pixels"
        )
    return binary_ood_metrics(scores, positive)


class PixelOODMetrics(Metric):
    """Streaming dataset-level AUROC / AP / FPR95 / best F1 for pixel OOD scores (higher = more OOD).

    ``update(scores, target)``: scores float ``(N, ...)``, target int of the same
    shape with 0 (in-distribution), 1 (OOD) and ``ignore_index`` (skipped).
    ``compute()`` returns ``auroc``, ``ap``, ``fpr95``, ``best_f1`` and
    ``best_f1_threshold`` (``score >= threshold`` = predicted OOD; in binned mode a
    bin edge). See the module docstring for the binning.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        mode: Literal["binned", "exact"] = "binned",
        num_bins: int = 1 << 20,
        score_range: tuple[float, float] | None = None,
        ignore_index: int = VOID_ID,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("binned", "exact"):
            raise ValueError(f"PixelOODMetrics: mode must be 'binned' or 'exact', got {mode!r}")
        self.mode = mode
        self.ignore_index = int(ignore_index)
        self.score_range = None if score_range is None else (float(score_range[0]), float(score_range[1]))
        if self.score_range is not None and not (
            math.isfinite(self.score_range[0])
            and math.isfinite(self.score_range[1])
            and self.score_range[0] < self.score_range[1]
        ):
            raise ValueError(f"PixelOODMetrics: score_range must be finite (lo, hi) with lo < hi, got {score_range!r}")
        if mode == "binned":
            if self.score_range is None:
                octaves = 2 * _EXP_WINDOW
                mbits = int(math.floor(math.log2(max(num_bins, 1) / (2 * octaves))))
                if not 1 <= mbits <= _F32_MANTISSA:
                    raise ValueError(
                        f"PixelOODMetrics: num_bins must be in [{4 * octaves}, {2 * octaves << _F32_MANTISSA}] "
                        f"without score_range, got {num_bins}"
                    )
                self._mbits = mbits
                self._half = octaves << mbits  # magnitude bins per sign
                self.num_bins = 2 * self._half + 1
            else:
                if num_bins < 2:
                    raise ValueError(f"PixelOODMetrics: num_bins must be >= 2, got {num_bins}")
                self.num_bins = int(num_bins)
            # row 0: in-distribution counts, row 1: OOD counts
            self.add_state("hist", default=torch.zeros(2, self.num_bins, dtype=torch.int64), dist_reduce_fx="sum")
        else:
            self.num_bins = 0
            self.add_state("scores", default=[], dist_reduce_fx="cat")
            self.add_state("positives", default=[], dist_reduce_fx="cat")
            self.add_state("n_pos", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state("n_neg", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    # ----------------------------------------------------------------- binning
    def bin_index(self, scores: Tensor) -> Tensor:
        """Histogram bin (int64) of each score; monotone non-decreasing in the score."""
        s = scores.float()
        if self.score_range is not None:
            lo, hi = self.score_range
            idx = torch.floor((s - lo) * (self.num_bins / (hi - lo)))
            return idx.clamp_(0, self.num_bins - 1).to(torch.int64)
        shift = _F32_MANTISSA - self._mbits
        # |s| as float32 bits is monotone in |s|; the top bits are (exponent, leading mantissa bits)
        mag = (s.abs().contiguous().view(torch.int32) >> shift) - ((_F32_BIAS - _EXP_WINDOW) << self._mbits)
        mag = mag.clamp_(-1, self._half - 1) + 1  # 0 = the bin around zero
        return (self._half + torch.sign(s).to(torch.int32) * mag).to(torch.int64)

    def bin_lower_edge(self, index: int) -> float:
        """Smallest score that falls in bin ``index`` (``-inf`` for the first bin)."""
        if index <= 0:
            return -math.inf
        if self.score_range is not None:
            lo, hi = self.score_range
            return lo + index * (hi - lo) / self.num_bins
        shift = _F32_MANTISSA - self._mbits
        offset = (_F32_BIAS - _EXP_WINDOW) << self._mbits
        if index > self._half:
            return _bits_to_float((index - self._half - 1 + offset) << shift)
        if index == self._half:
            return -_bits_to_float(((_F32_BIAS - _EXP_WINDOW) << _F32_MANTISSA) - 1)
        mag = self._half - 1 - index
        return -_bits_to_float(((mag + 1 + offset) << shift) - 1)

    # ------------------------------------------------------------------ update
    def update(self, scores: Tensor, target: Tensor) -> None:
        """Add a batch of score maps and their binary targets (0 in, 1 OOD, ignore_index skipped)."""
        target, valid = check_binary_inputs(scores, target, self.ignore_index, type(self).__name__)
        if self.mode == "exact":
            pos = target[valid] == 1
            n_pos = pos.sum()
            self.n_pos += n_pos
            self.n_neg += pos.numel() - n_pos
            self.scores.append(scores[valid].float())
            self.positives.append(pos)
            return
        # ignored pixels go to an extra slot instead of being masked out (masking copies every pixel)
        combined = torch.where(valid, self.bin_index(scores) + target.long() * self.num_bins, 2 * self.num_bins)
        # bincount without weights is deterministic on CUDA too
        counts = torch.bincount(combined.flatten(), minlength=2 * self.num_bins + 1)
        self.hist += counts[: 2 * self.num_bins].view(2, self.num_bins)

    # ----------------------------------------------------------------- compute
    def _pos_neg_counts(self) -> Tensor:
        if self.mode == "binned":
            return self.hist.sum(1).flip(0)
        return torch.stack([self.n_pos, self.n_neg])

    def is_computable(self) -> bool:
        """True when the data seen (on all processes) holds OOD and in-distribution pixels; collective in DDP."""
        counts = self._pos_neg_counts().clone()
        if (
            not self._is_synced
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size(self.process_group) > 1
        ):
            torch.distributed.all_reduce(counts, group=self.process_group)
        return bool((counts > 0).all())

    def compute(self) -> dict[str, Tensor]:
        """Dataset-level ``auroc``, ``ap``, ``fpr95``, ``best_f1``, ``best_f1_threshold``."""
        n_pos, n_neg = self._pos_neg_counts().tolist()
        if n_pos == 0 or n_neg == 0:
            raise NotComputableError(
                f"{type(self).__name__}: cannot compute AUROC/AP/FPR95 with {n_pos} OOD and {n_neg} "
                "in-distribution pixels; both must be present (check is_computable() first)"
            )
        if self.mode == "exact":
            scores = self.scores if isinstance(self.scores, Tensor) else torch.cat(self.scores)
            positives = self.positives if isinstance(self.positives, Tensor) else torch.cat(self.positives)
            return _exact(scores, positives, type(self).__name__)
        tps, fps, bins = curve_counts_from_histogram(self.hist)
        out = binary_curve_metrics(tps, fps)
        _, best = best_f1(tps, fps)
        out["best_f1_threshold"] = torch.tensor(
            self.bin_lower_edge(int(bins[best])), dtype=torch.float64, device=tps.device
        )
        return out

    def curves(self, max_points: int = 512) -> dict[str, Tensor]:
        """Dataset-level ROC (``fpr``, ``tpr``) and precision-recall (``recall``, ``precision``) curves.

        Also ``auroc``, ``ap`` and ``fpr95`` of the full curves. At most ``max_points`` points
        per curve (evenly spaced over the distinct thresholds, the last one kept), from the
        states of all processes (collective under DDP).
        """
        with self.sync_context(should_sync=self._to_sync, should_unsync=self._should_unsync):
            if self.mode == "exact":
                scores = self.scores if isinstance(self.scores, Tensor) else torch.cat(self.scores)
                positives = self.positives if isinstance(self.positives, Tensor) else torch.cat(self.positives)
                tps, fps, _ = curve_counts_from_scores(scores, positives)
            else:
                tps, fps, _ = curve_counts_from_histogram(self.hist)
        if tps.numel() == 0 or tps[-1] == 0 or fps[-1] == 0:
            raise NotComputableError(f"{type(self).__name__}: curves need OOD and in-distribution pixels")
        summary = binary_curve_metrics(tps, fps)
        keep = torch.unique(
            torch.linspace(0, tps.numel() - 1, min(max_points, tps.numel()), device=tps.device).round().long()
        )
        tps, fps = tps[keep], fps[keep]
        return {
            "fpr": (fps / fps[-1]).cpu(),
            "tpr": (tps / tps[-1]).cpu(),
            "recall": (tps / tps[-1]).cpu(),
            "precision": (tps / (tps + fps)).cpu(),
            **{key: summary[key].cpu() for key in ("auroc", "ap", "fpr95")},
        }

    def plot(
        self, ax: tuple[Axes, Axes] | None = None, title: str | None = None, max_points: int = 512
    ) -> tuple[Figure, tuple[Axes, Axes]]:
        """ROC and precision-recall curves with AUROC, FPR95 and AP, as ``(figure, (roc_axes, pr_axes))``.

        Draws into the two axes ``ax`` when given; collective under DDP like :meth:`curves`.
        """
        from synthrel_lightning.metrics.plots import roc_pr_figure

        fig = roc_pr_figure(self.curves(max_points), title=title, axes=ax)
        return fig, ax if ax is not None else (fig.axes[0], fig.axes[1])

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, num_bins={self.num_bins}, score_range={self.score_range}"
