"""Dataset-level pixel OOD metrics (AUROC, AP, FPR95, best F1) with SegmentMeIfYouCan definitions.

Curves are built from dataset-level confusion counts over descending thresholds,
never averaged per batch or per frame:

* AUROC: trapezoid rule over the ROC points, starting at (0, 0).
* AP: ``sum_n (R_n - R_{n-1}) P_n`` (step sum, as ``sklearn.metrics.average_precision_score``).
* FPR95: FPR at the first (highest) threshold whose TPR >= 0.95.
* best F1 and its threshold: pixels with ``score >= best_f1_threshold`` are the
  predicted OOD pixels at the best F1.

Two modes:

``"exact"`` keeps every non-ignored score (a ``cat`` state, float64 scores stay
float64, lower precisions are kept as float32) and sorts once in ``compute()``:
the ground truth, for small sets.

``"binned"`` keeps one fixed-size histogram (in-distribution and OOD counts per
score bin), so memory does not grow with the number of pixels, and computes
exactly what the exact mode would on scores rounded to their bin. The bins need
no score range and resolve every kind of score:

Scores are keyed by their distance to a segment centre (8 segments by sign and magnitude); each
exponent range of that distance gets its own bins and resolution, fitted to the scores seen, so
clusters of scores any distance apart are resolved alike. Merging states (``forward``, DDP sync)
gives exactly the state one process would have built (the key and layout rules:
:mod:`synthrel_lightning.metrics.score_bins`).

``aggregation="official"`` replaces both with the official benchmark's aggregation (768
percentile bins per frame on float16 scores, merged over frames; see
:mod:`synthrel_lightning.metrics.official`), to reproduce leaderboard numbers exactly.

Binned mode switches to the exact sort on its own when the first scores (kept until both classes
were seen) need finer bins than ``num_bins`` give (their resolution bound exceeds ``tolerance``,
e.g. score clusters within one factor-of-two range), warns once and gives the reason in ``exact_fallback``; see
:mod:`synthrel_lightning.metrics._fallback`. Its CPU work runs on ``cpu_threads`` (1) intra-op
threads (:mod:`synthrel_lightning.metrics._threads`).

After ``compute()``, :attr:`PixelOODMetrics.resolution` holds the largest change
of AUROC, AP, FPR95 and best F1 that any order (or tie) of the pixels sharing a
bin could make, so the distance to the exact sort is at most that. Bins that can
hold only one value of the inputs' dtype count for nothing; scores quantised more
coarsely than their dtype (``1 - p`` in float32 near 0) make the bound
pessimistic. A warning (once per metric) gives it when it exceeds ``tolerance``
(default ``1e-4``).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from synthrel_lightning.labels import VOID_ID
from synthrel_lightning.metrics._checks import check_binary_inputs
from synthrel_lightning.metrics._fallback import ExactFallback, keep_precision
from synthrel_lightning.metrics._float32_bins import float32_keys, ranges32, storage_tables32
from synthrel_lightning.metrics._threads import cpu_threads
from synthrel_lightning.metrics.functional import (
    best_f1,
    binary_curve_metrics,
    binary_ood_metrics,
    curve_counts_from_histogram,
    curve_counts_from_scores,
    resolution_from_counts,
)
from synthrel_lightning.metrics.official import (
    OFFICIAL_BINS,
    check_aggregation,
    official_curve,
    official_frame_bins,
    official_metrics,
)
from synthrel_lightning.metrics.score_bins import (
    FINE,
    MANTISSA_BITS,
    BinLayout,
    batch_ranges,
    empty_header,
    groups_and_keys,
    merge_states,
    ordered,
    split_state,
    unordered,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class NotComputableError(ValueError):
    """Raised by ``compute()`` when the data seen so far has no OOD or no in-distribution pixel."""


def pixel_ood_metrics(scores: Tensor, target: Tensor, ignore_index: int = VOID_ID) -> dict[str, Tensor]:
    """Exact (sort-based) AUROC, AP, FPR95, best F1 and its threshold over all non-ignored pixels."""
    target, valid = check_binary_inputs(scores, target, ignore_index, "pixel_ood_metrics")
    return _exact(keep_precision(scores[valid]), target[valid] == 1, "pixel_ood_metrics")


def _exact(scores: Tensor, positive: Tensor, who: str) -> dict[str, Tensor]:
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.numel():
        raise NotComputableError(
            f"{who}: pixel OOD metrics need OOD and in-distribution pixels; got {n_pos} OOD and "
            f"{positive.numel() - n_pos} in-distribution pixels"
        )
    return binary_ood_metrics(scores, positive)


class PixelOODMetrics(ExactFallback, Metric):
    """Streaming dataset-level AUROC / AP / FPR95 / best F1 for pixel OOD scores (higher = more OOD).

    ``update(scores, target)``: scores float ``(N, ...)``, target int of the same
    shape with 0 (in-distribution), 1 (OOD) and ``ignore_index`` (skipped).
    ``compute()`` returns ``auroc``, ``ap``, ``fpr95``, ``best_f1`` and
    ``best_f1_threshold`` (``score >= threshold`` = predicted OOD; in binned mode the
    smallest score of the best bin). ``num_bins`` bounds the binned state
    (``2 * num_bins`` int64 counts: 16 MB at the default); ``tolerance``: the
    binned resolution above which ``compute()`` warns. ``aggregation="official"``: the
    SegmentMeIfYouCan benchmark's own aggregation. ``fallback_pixels``: binned mode switches to
    the exact sort (and says so in ``exact_fallback``) when its first scores need finer bins,
    while the set holds at most that many pixels (0: never). ``cpu_threads``: intra-op threads of
    the binned update on CPU tensors (``None``: torch's setting). See the module docstring.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    official_thresholds: list[Tensor]  # official aggregation (the other states: see ExactFallback)
    official_counts: list[Tensor]

    def __init__(
        self,
        mode: Literal["binned", "exact"] = "binned",
        num_bins: int = 1 << 20,
        ignore_index: int = VOID_ID,
        tolerance: float = 1e-4,
        aggregation: Literal["exact", "official"] = "exact",
        fallback_pixels: int = 1 << 25,
        cpu_threads: int | None = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.fallback_pixels = int(fallback_pixels)
        self.cpu_threads = cpu_threads
        self.exact_fallback: str | None = None  # why the binned metric switched to the exact path, if it did
        self._probe_pending = self.fallback_pixels > 0
        self._fallback_active = False
        self._kept_mantissa = 0  # the finest input precision among the kept scores
        if mode not in ("binned", "exact"):
            raise ValueError(f"PixelOODMetrics: mode must be 'binned' or 'exact', got {mode!r}")
        self.aggregation = check_aggregation(aggregation, "PixelOODMetrics")
        self.mode = "official" if aggregation == "official" else mode
        self.ignore_index = int(ignore_index)
        self.tolerance = float(tolerance)
        self.resolution: dict[str, float] | None = None
        self._warned = False
        if self.mode == "official":  # the benchmark's per-frame bins, concatenated over frames
            self.num_bins = OFFICIAL_BINS
            self.add_state("official_thresholds", default=[], dist_reduce_fx="cat")
            self.add_state("official_counts", default=[], dist_reduce_fx="cat")
            self.add_state("n_pos", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state("n_neg", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        elif mode == "binned":
            if num_bins < 64:
                raise ValueError(f"PixelOODMetrics: num_bins must be >= 64, got {num_bins}")
            self.num_bins = int(num_bins)
            # 2 x num_bins counts (row 0 in-distribution, row 1 OOD) in storage order, then the layout
            default = torch.cat([torch.zeros(2 * self.num_bins, dtype=torch.int64), torch.tensor(empty_header())])
            self.add_state("hist", default=default, dist_reduce_fx=merge_states)
        if self.mode != "official":  # the exact mode's states; binned mode's exact fallback uses them too
            self.num_bins = 0 if self.mode == "exact" else self.num_bins
            self.add_state("scores", default=[], dist_reduce_fx="cat")
            self.add_state("positives", default=[], dist_reduce_fx="cat")
            self.add_state("n_pos", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state("n_neg", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    # ------------------------------------------------------------------ update
    def update(self, scores: Tensor, target: Tensor) -> None:
        """Add a batch of score maps and their binary targets (0 in, 1 OOD, ignore_index skipped)."""
        target, valid = check_binary_inputs(scores, target, self.ignore_index, type(self).__name__)
        if self.mode == "official":
            self._update_official(scores, target)
            return
        if self.mode == "exact":
            self._update_exact(scores, target, valid)
            return
        with cpu_threads(scores.device, self.cpu_threads):
            if self._probe_pending or self._fallback_active:
                self._kept_mantissa = max(self._kept_mantissa, MANTISSA_BITS.get(scores.dtype, 52))
                self._update_exact(scores, target, valid)  # kept until the probe decides, or in the fallback
                if self._probe_pending:
                    self._probe()
                elif int(self.n_pos + self.n_neg) > self.fallback_pixels:
                    self._end_fallback()
                return
            self._update_binned(scores, target, valid)

    def reset(self) -> None:
        """Clear the state; the next batch is probed again for the exact fallback."""
        super().reset()
        self._probe_pending = self.fallback_pixels > 0
        self._fallback_active = False
        self._kept_mantissa = 0  # the finest input precision among the kept scores

    def _update_binned(self, scores: Tensor, target: Tensor, valid: Tensor, mantissa: int | None = None) -> None:
        mantissa = mantissa or MANTISSA_BITS.get(scores.dtype, 52)
        # one row per (class, fine group): in-distribution, OOD (counted num_bins further), ignored (not counted)
        code = torch.where(valid.reshape(-1), target.reshape(-1), 2)
        if scores.dtype != torch.float64 and self._update_float32(scores, code, mantissa):
            return
        fine, key = groups_and_keys(scores)
        row = fine.add_(code, alpha=FINE)
        layout = self._widen(*batch_ranges(row, key), mantissa)
        self._count(layout.storage_index(row, key))

    def _update_float32(self, scores: Tensor, code: Tensor, mantissa: int) -> bool:
        """The same binning with 32-bit keys (:mod:`~synthrel_lightning.metrics._float32_bins`); False if it cannot."""
        fine, key = float32_keys(scores)
        row = fine.add_(code.to(torch.int32), alpha=FINE)
        ranges = ranges32(row, key)
        if ranges is None:
            return False
        tables = storage_tables32(self._widen(*ranges, mantissa), ranges[1] >= 0)
        if tables is None:
            return False
        offset, sign, shift = (table.index_select(0, row) for table in tables)
        self._count(offset.addcmul_(sign, key >> shift))
        return True

    def _count(self, index: Tensor) -> None:
        # bincount without weights is deterministic on CUDA too
        self.hist[: 2 * self.num_bins] += torch.bincount(index, minlength=2 * self.num_bins + 1)[: 2 * self.num_bins]

    def _update_official(self, scores: Tensor, target: Tensor) -> None:
        """One set of benchmark bins per frame (each leading index of an (N, H, W) batch; an (H, W) map is one)."""
        frames = zip(scores.reshape(-1, *scores.shape[-2:]), target.reshape(-1, *target.shape[-2:]))
        for frame_scores, frame_target in frames if scores.ndim >= 2 else [(scores, target)]:
            bins = official_frame_bins(frame_scores, frame_target, self.ignore_index)
            if bins is None:
                continue
            thresholds, ood_counts, in_counts = (torch.from_numpy(b.copy()).to(self.n_pos.device) for b in bins)
            self.official_thresholds.append(thresholds)
            self.official_counts.append(torch.stack([ood_counts, in_counts], 1))
            self.n_pos += ood_counts.sum()
            self.n_neg += in_counts.sum()

    def _official_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        thresholds = dim_zero_cat(self.official_thresholds).cpu().numpy()
        counts = dim_zero_cat(self.official_counts).cpu().numpy()
        return thresholds, counts[:, 0], counts[:, 1]

    def _layout(self, header: Tensor) -> BinLayout:
        """The layout of a header (the last one is kept: most batches do not change it)."""
        cached = getattr(self, "_layout_cache", None)
        if cached is not None and cached[0].device == header.device and torch.equal(cached[0], header):
            return cached[1]
        layout = BinLayout.from_header(header, self.num_bins)
        self._layout_cache = (header.clone(), layout)
        return layout

    def _widen(self, low: Tensor, high: Tensor, mantissa: int) -> BinLayout:
        """The stored layout widened to hold a batch's key ranges, counts moved when its bins change; the new one."""
        counts, header = split_state(self.hist)
        new_header = torch.cat(
            [header[:FINE].minimum(low), header[FINE : 2 * FINE].maximum(high), header[-1:].clamp_min(mantissa)]
        )
        if torch.equal(new_header, header):
            return self._layout(header)
        old, new = self._layout(header), self._layout(new_header)
        if not old.same_bins(new):
            counts.copy_(old.move(counts, new))
        header.copy_(new_header)
        return new

    # ----------------------------------------------------------------- compute
    def _ascending_counts(self) -> tuple[Tensor, Tensor, Tensor, BinLayout]:
        """(2, U) counts of the used bins in ascending score order, their storage indices, single-value bins, layout."""
        counts, header = split_state(self.hist)
        layout = self._layout(header)
        order = torch.arange(layout.total, device=counts.device)  # storage order is ascending score order
        return counts[:, : layout.total], order, layout.single_valued(), layout

    def _threshold(self, storage_index: int, layout: BinLayout) -> float:
        """The smallest float64 score whose bin is at or above the storage bin ``storage_index``."""
        target = layout.rank_of_storage(storage_index)

        def at_or_above(value: float) -> bool:
            return layout.rank_of_value(value, target) >= target

        lo, hi = ordered(-math.inf) + 1, ordered(math.inf) - 1  # the finite floats
        if at_or_above(unordered(lo)):
            return -math.inf
        while hi - lo > 1:  # invariant: below at lo, at or above at hi
            mid = (lo + hi) // 2
            if at_or_above(unordered(mid)):
                hi = mid
            else:
                lo = mid
        return unordered(hi)

    def _curve_counts(self) -> tuple[Tensor, Tensor]:
        """Cumulative true / false positives at the descending thresholds (distinct scores or bins)."""
        if self.mode == "official":
            curve = official_curve(*self._official_arrays())
            return torch.from_numpy(curve["tp"]), torch.from_numpy(curve["fp"])
        if self._settled() == "exact":
            scores = self.scores if isinstance(self.scores, Tensor) else torch.cat(self.scores)
            positives = self.positives if isinstance(self.positives, Tensor) else torch.cat(self.positives)
            tps, fps, _ = curve_counts_from_scores(scores, positives)
        else:
            tps, fps, _ = curve_counts_from_histogram(self._ascending_counts()[0])
        return tps, fps

    def _pos_neg_counts(self) -> Tensor:
        kept = torch.stack([self.n_pos, self.n_neg])
        return split_state(self.hist)[0].sum(1).flip(0) + kept if self.mode == "binned" else kept

    def _counts_on_all_processes(self) -> Tensor:
        """(OOD, in-distribution) pixel counts summed over the processes (collective in DDP)."""
        counts = self._pos_neg_counts().clone()
        if (
            not self._is_synced
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size(self.process_group) > 1
        ):
            torch.distributed.all_reduce(counts, group=self.process_group)
        return counts

    def is_computable(self) -> bool:
        """True when the data seen (on all processes) holds OOD and in-distribution pixels; collective in DDP."""
        return bool((self._counts_on_all_processes() > 0).all())

    def compute(self) -> dict[str, Tensor]:
        """Dataset-level ``auroc``, ``ap``, ``fpr95``, ``best_f1``, ``best_f1_threshold``."""
        n_pos, n_neg = self._pos_neg_counts().tolist()
        if n_pos == 0 or n_neg == 0:
            raise NotComputableError(
                f"{type(self).__name__}: cannot compute AUROC/AP/FPR95 with {n_pos} OOD and {n_neg} "
                "in-distribution pixels; both must be present (check is_computable() first)"
            )
        if self.mode == "official":
            values = official_metrics(*self._official_arrays())
            return {k: torch.tensor(v, dtype=torch.float64, device=self.n_pos.device) for k, v in values.items()}
        if self._settled() == "exact":
            scores = self.scores if isinstance(self.scores, Tensor) else torch.cat(self.scores)
            positives = self.positives if isinstance(self.positives, Tensor) else torch.cat(self.positives)
            self.resolution = None if self.mode == "exact" else dict.fromkeys(("auroc", "ap", "fpr95", "best_f1"), 0.0)
            return _exact(scores, positives, type(self).__name__)
        ordered, order, single, layout = self._ascending_counts()
        tps, fps, bins = curve_counts_from_histogram(ordered)
        out = binary_curve_metrics(tps, fps)
        _, best = best_f1(tps, fps)
        threshold = self._threshold(int(order[int(bins[best])]), layout)
        out["best_f1_threshold"] = torch.tensor(threshold, dtype=torch.float64, device=tps.device)
        self.resolution = {k: float(v) for k, v in resolution_from_counts(tps, fps, ~single[bins]).items()}
        if max(self.resolution.values()) > self.tolerance and not self._warned:
            self._warned = True  # once per metric: the bound is a property of the scores, not of an epoch
            warnings.warn(
                f"{type(self).__name__}: the binned metrics may differ from an exact sort by up to "
                f"{', '.join(f'{k} {v:.1e}' for k, v in self.resolution.items())} (tolerance {self.tolerance:g}): "
                "pixels that may hold different scores share bins. This is an upper bound (scores quantised more "
                "coarsely than their dtype, e.g. 1 - p in float32, make it pessimistic); for exact values use "
                f"more num_bins (now {self.num_bins}) or mode='exact'",
                stacklevel=2,
            )
        return out

    def curves(self, max_points: int = 512) -> dict[str, Tensor]:
        """Dataset-level ROC (``fpr``, ``tpr``) and precision-recall (``recall``, ``precision``) curves.

        Also ``auroc``, ``ap`` and ``fpr95`` of the full curves. At most ``max_points`` points
        per curve (evenly spaced over the distinct thresholds, the last one kept), from the
        states of all processes (collective under DDP).
        """
        with self.sync_context(should_sync=self._to_sync, should_unsync=self._should_unsync):
            tps, fps = self._curve_counts()
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
        return (
            f"mode={self.mode!r}, aggregation={self.aggregation!r}, num_bins={self.num_bins}, "
            f"tolerance={self.tolerance}"
        )
