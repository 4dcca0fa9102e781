"""Metric arithmetic, written once: calibration bins and ECE, OOD curves (AUROC, AP, FPR95, best F1), IoU.

Every metric class of :mod:`synthrel_lightning.metrics`, the temperature fit and the
per-frame statistics of the correlation workflow call these functions, so a definition
cannot drift between them. They take torch tensors (any device) or anything
``torch.as_tensor`` accepts (numpy arrays, lists) and return float64 tensors; the three
``*_from_*`` functions at the end take and return plain numpy / Python values.

Definitions (SegmentMeIfYouCan, Chan et al., NeurIPS 2021 Datasets and Benchmarks;
https://github.com/SegmentMeIfYouCan/road-anomaly-benchmark):

* Calibration: top-1 confidence in ``num_bins`` equal-width bins ``[i/B, (i+1)/B)``
  (the last one closed); per bin the pixel count, the summed confidence and the summed
  correctness; ``ECE = sum_b |correct_b - confidence_b| / N`` (Guo et al., ICML 2017).
* OOD curves: dataset-level confusion counts at descending thresholds (positive = OOD).
  ``AP = sum_n (R_n - R_{n-1}) P_n`` (step sum, as ``sklearn.metrics.average_precision_score``),
  precision 1 where nothing is predicted positive; AUROC by the trapezoid rule from (0, 0);
  FPR95 = FPR at the first (highest) threshold whose TPR >= 0.95, 1.0 if none;
  best F1 = ``max 2 TP / (TP + FP + P)`` over the thresholds.
* IoU: per class ``TP / (TP + FP + FN)`` from a confusion matrix (rows = target).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

FINE_BINS_PER_OCTAVE_BITS = 6
"""log2 of the fine confidence bins per octave of ``u = 1 - confidence`` (64 per power of two)."""

FINE_OCTAVES = 24
"""Fine bins cover ``u`` in ``[2**-24, 1)``: float32 cannot tell confidences closer to 1 apart."""

FINE_BINS = (FINE_OCTAVES << FINE_BINS_PER_OCTAVE_BITS) + 1
"""Number of fine (log-scale) confidence bins used for the adaptive ECE."""


def _tensor(x: Any, dtype: torch.dtype | None = None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t if dtype is None else t.to(dtype)


# --------------------------------------------------------------------------- calibration
def confidence_bin(confidence: Tensor, num_bins: int) -> Tensor:
    """Equal-width bin (int64) of each confidence: ``[i/B, (i+1)/B)``, 1.0 in the last bin."""
    if num_bins < 1:
        raise ValueError(f"confidence_bin: num_bins must be >= 1, got {num_bins}")
    return (confidence * num_bins).floor().long().clamp_(0, num_bins - 1)


def fine_confidence_bin(confidence: Tensor) -> Tensor:
    """Fine log-scale bin (int64, ``0..FINE_BINS-1``) of ``u = 1 - confidence``; 0 = most confident.

    A bin is given by the binary exponent and the top 6 mantissa bits of ``u`` as float32
    (bins narrower than 1.6 % of ``u``); ``u < 2**-24`` shares bin 0.
    """
    u = (1.0 - confidence.float()).clamp_min(0.0).contiguous()
    shift = 23 - FINE_BINS_PER_OCTAVE_BITS
    idx = (u.view(torch.int32) >> shift) - ((127 - FINE_OCTAVES) << FINE_BINS_PER_OCTAVE_BITS) + 1
    return idx.clamp_(0, FINE_BINS - 1).to(torch.int64)


def bin_sums(bins: Tensor, confidence: Tensor, correct: Tensor, num_bins: int) -> Tensor:
    """Per-bin sums ``(..., 3, num_bins)`` float64 (pixel count, summed confidence, summed correctness).

    ``bins`` and ``confidence`` have shape ``(..., N)`` (leading dimensions, e.g. one row per
    temperature, get their own sums); ``correct`` (bool or 0/1) broadcasts to it. Counts are
    exact integers; confidence sums are float64.
    """
    lead = tuple(confidence.shape[:-1])
    rows = math.prod(lead)
    device = confidence.device
    flat = bins.reshape(rows, -1) + torch.arange(rows, device=device)[:, None] * num_bins
    flat = flat.reshape(-1)
    size = rows * num_bins
    hit = correct.expand(confidence.shape).reshape(-1)
    hit = hit if hit.dtype == torch.bool else hit != 0
    out = torch.stack(
        [
            torch.bincount(flat, minlength=size).double(),  # unweighted bincount is deterministic on CUDA
            torch.bincount(flat, weights=confidence.reshape(-1).double(), minlength=size),
            torch.bincount(flat[hit], minlength=size).double(),
        ]
    )
    return out.view(3, rows, num_bins).movedim(0, 1).reshape(*lead, 3, num_bins)


def top1_bin_sums(confidence: Tensor, correct: Tensor, num_bins: int) -> Tensor:
    """Equal-width top-1 bin sums ``(..., 3, num_bins)``: count, summed confidence, summed correctness."""
    return bin_sums(confidence_bin(confidence, num_bins), confidence, correct, num_bins)


def fine_bin_sums(confidence: Tensor, correct: Tensor) -> Tensor:
    """Fine log-scale bin sums ``(..., 3, FINE_BINS)`` for :func:`adaptive_ece_from_sums`."""
    return bin_sums(fine_confidence_bin(confidence), confidence, correct, FINE_BINS)


def ece_from_sums(sums: Tensor) -> Tensor:
    """Top-1 ECE from per-bin sums ``(..., 3, B)`` (count, confidence, correctness); NaN without pixels."""
    sums = _tensor(sums, torch.float64)
    total = sums[..., 0, :].sum(-1)
    gap = (sums[..., 2, :] - sums[..., 1, :]).abs().sum(-1)
    return torch.where(total > 0, gap / total.clamp_min(1), torch.full_like(total, float("nan")))


def adaptive_ece_from_sums(sums: Tensor, num_bins: int) -> Tensor:
    """Equal-mass (adaptive) ECE with ``num_bins`` bins from fine bin sums ``(3, F)`` ordered by confidence.

    Equal-mass boundaries are placed on the cumulative fine counts; a fine bin that
    straddles a boundary is split in proportion to its count (its pixels are treated as
    exchangeable, like a random tie-break of an exact sort). Either order (ascending or
    descending confidence) gives the same value. NaN without pixels.
    """
    sums = _tensor(sums, torch.float64)
    count, conf_sum, correct_sum = sums[0], sums[1], sums[2]
    total = count.sum()
    if total <= 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=sums.device)
    hi = count.cumsum(0)
    lo = hi - count
    edges = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64, device=sums.device) * total
    # overlap[b, f]: how many pixels of fine bin f fall into equal-mass bin b
    overlap = (torch.minimum(hi[None], edges[1:, None]) - torch.maximum(lo[None], edges[:-1, None])).clamp_min(0)
    frac = overlap / count.clamp_min(1)[None]
    return (frac @ correct_sum - frac @ conf_sum).abs().sum() / total


# --------------------------------------------------------------------------- OOD curves
def curve_counts_from_scores(scores: Tensor, positive: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact cumulative ``(tps, fps, thresholds)`` at the distinct scores, descending (one sort).

    ``score >= thresholds[i]`` predicts ``tps[i]`` true and ``fps[i]`` false positives.
    """
    scores = _tensor(scores).reshape(-1)
    positive = _tensor(positive).reshape(-1).bool()
    if scores.numel() == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=scores.device)
        return empty, empty, empty
    order = torch.argsort(scores, descending=True)
    s = scores[order]
    tp_cum = positive[order].to(torch.int64).cumsum(0)
    # the last index of each run of equal scores is one threshold
    last = torch.nonzero(s[1:] != s[:-1]).flatten()
    last = torch.cat([last, last.new_tensor([s.numel() - 1])])
    tps = tp_cum[last]
    return tps.double(), (last + 1 - tps).double(), s[last].double()


def curve_counts_from_histogram(hist: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cumulative ``(tps, fps, bins)`` at descending thresholds from a ``(2, B)`` histogram.

    Row 0 counts negatives (in-distribution), row 1 positives (OOD), per score bin in
    ascending score order. One threshold per non-empty bin (the bin's lower edge),
    highest first; ``bins`` holds the ascending index of each threshold's bin.
    """
    hist = _tensor(hist)
    if hist.ndim != 2 or hist.shape[0] != 2:
        raise ValueError(f"curve_counts_from_histogram: expected a (2, B) histogram, got {tuple(hist.shape)}")
    desc = hist.flip(1).double()
    filled = torch.nonzero(desc.sum(0)).flatten()
    tps = desc[1, filled].cumsum(0)
    fps = desc[0, filled].cumsum(0)
    return tps, fps, hist.shape[1] - 1 - filled


def _rates(tps: Tensor, fps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    tps, fps = _tensor(tps, torch.float64), _tensor(fps, torch.float64)
    n_pos, n_neg = tps[-1], fps[-1]
    return tps, fps, tps / n_pos, fps / n_neg


def auroc(tps: Tensor, fps: Tensor) -> Tensor:
    """Area under the ROC curve (trapezoid rule from (0, 0)) from cumulative counts at descending thresholds."""
    tps, fps, tpr, fpr = _rates(tps, fps)
    zero = tps.new_zeros(1)
    return torch.trapezoid(torch.cat([zero, tpr]), torch.cat([zero, fpr]))


def average_precision(tps: Tensor, fps: Tensor) -> Tensor:
    """AP as the step sum ``sum_n (R_n - R_{n-1}) P_n`` (scikit-learn's), precision 1 where nothing is predicted."""
    tps, fps, tpr, _ = _rates(tps, fps)
    predicted = tps + fps
    precision = torch.where(predicted > 0, tps / predicted.clamp_min(1), torch.ones_like(tps))
    return ((tpr - torch.cat([tps.new_zeros(1), tpr[:-1]])) * precision).sum()


def fpr_at_tpr(tps: Tensor, fps: Tensor, tpr: float = 0.95) -> Tensor:
    """FPR at the first (highest) threshold whose TPR >= ``tpr`` (1.0 if none); FPR95 by default."""
    tps, fps, _, fpr = _rates(tps, fps)
    # exact rational comparison: tps / n_pos >= 19/20 without rounding right at the boundary
    target = Fraction(str(tpr))
    reached = tps * target.denominator >= tps[-1] * target.numerator
    if not bool(reached.any()):
        return torch.ones((), dtype=torch.float64, device=tps.device)
    return fpr[int(reached.to(torch.uint8).argmax())]


def best_f1(tps: Tensor, fps: Tensor) -> tuple[Tensor, int]:
    """The highest F1 ``2 TP / (TP + FP + P)`` over the thresholds and the index of its threshold."""
    tps, fps = _tensor(tps, torch.float64), _tensor(fps, torch.float64)
    f1 = 2 * tps / (tps + fps + tps[-1])
    best = int(f1.argmax())
    return f1[best], best


def binary_curve_metrics(tps: Tensor, fps: Tensor, thresholds: Tensor | None = None) -> dict[str, Tensor]:
    """``auroc``, ``ap``, ``fpr95``, ``best_f1`` (and ``best_f1_threshold`` given thresholds) from cumulative counts.

    ``tps`` / ``fps`` are the true / false positives at descending thresholds (the last
    entry holds all positives / negatives). All values are NaN when there is no positive
    or no negative.
    """
    tps, fps = _tensor(tps, torch.float64), _tensor(fps, torch.float64)
    if tps.numel() == 0 or tps[-1] <= 0 or fps[-1] <= 0:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=tps.device)
        out = {"auroc": nan, "ap": nan.clone(), "fpr95": nan.clone(), "best_f1": nan.clone()}
        if thresholds is not None:
            out["best_f1_threshold"] = nan.clone()
        return out
    f1, best = best_f1(tps, fps)
    out = {"auroc": auroc(tps, fps), "ap": average_precision(tps, fps), "fpr95": fpr_at_tpr(tps, fps), "best_f1": f1}
    if thresholds is not None:
        out["best_f1_threshold"] = _tensor(thresholds, torch.float64)[best]
    return out


def binned_resolution(hist: Tensor, single: Tensor | None = None) -> dict[str, Tensor]:
    """How far ``auroc``, ``ap``, ``fpr95``, ``best_f1`` of a ``(2, B)`` histogram can be from the exact sort's.

    Row 0 counts negatives, row 1 positives, per bin in ascending score order. Each
    value is the largest change that any order (or tie) of the pixels sharing a bin
    could make: AUROC ``sum_b p_b n_b / (2 P N)``; AP between the positives first (tied)
    and the negatives first (positives distinct) in every bin; FPR95 the crossing bin's negatives over N; best
    F1 the best cut inside a bin with its positives first. Bins marked in ``single``
    (bool, per bin) hold one score value: their ties are exact and count for nothing.
    """
    tps, fps, bins = curve_counts_from_histogram(hist)
    mixed = torch.ones_like(tps, dtype=torch.bool) if single is None else ~_tensor(single).bool()[bins]
    return resolution_from_counts(tps, fps, mixed)


def resolution_from_counts(tps: Tensor, fps: Tensor, mixed: Tensor) -> dict[str, Tensor]:
    """:func:`binned_resolution` from the cumulative counts of the non-empty bins (descending scores).

    ``mixed`` (bool, per bin) marks the bins that may hold several score values.
    """
    tps, fps = _tensor(tps, torch.float64), _tensor(fps, torch.float64)
    zero = tps.new_zeros(1)
    pos, neg = torch.diff(tps, prepend=zero), torch.diff(fps, prepend=zero)
    n_neg, n_pos = fps[-1], tps[-1]
    # the bins with positives whose pixels may hold several scores
    at = torch.nonzero((pos > 0) & mixed).flatten()
    p, n, t, f = pos[at], neg[at], tps[at] - pos[at], fps[at] - neg[at]

    # highest AP with the positives first and tied (each counts the tie's end), lowest with the negatives
    # first and distinct positives: sum_{k=1..p} (T + k) / (M + k) = p - (M - T) sum_{k=1..p} 1 / (M + k),
    # M = T + F + n, and sum_{k=1..p} 1 / (M + k) <= log((M + p + 1/2) / (M + 1/2)) (1/x is convex)
    best = p * (t + p) / (t + f + p)
    worst = p - (f + n) * torch.log1p(p / (t + f + n + 0.5))
    tied = p * (t + p) / (t + f + p + n)
    ap = torch.maximum((best - tied).sum(), (tied - worst).sum()) / n_pos
    auroc = (p * n).sum() / (2 * n_pos * n_neg)
    crossing = int(torch.searchsorted(tps * 20, n_pos * 19))  # the first bin with TPR >= 0.95
    fpr95 = neg[crossing] * mixed[crossing] / n_neg if crossing < tps.numel() else tps.new_zeros(())
    f1 = (2 * tps / (tps + fps + n_pos)).max()
    best_f1 = ((2 * (t + p) / (t + f + p + n_pos)).max() - f1).clamp_min(0) if at.numel() else tps.new_zeros(())
    return {"auroc": auroc, "ap": ap.clamp_min(0), "fpr95": fpr95, "best_f1": best_f1}


def binary_ood_metrics(scores: Tensor, positive: Tensor) -> dict[str, Tensor]:
    """Exact (sort-based) ``auroc``, ``ap``, ``fpr95``, ``best_f1``, ``best_f1_threshold`` of flat scores."""
    return binary_curve_metrics(*curve_counts_from_scores(scores, positive))


# --------------------------------------------------------------------------- segmentation
def iou_per_class(confusion: Tensor) -> Tensor:
    """IoU ``TP / (TP + FP + FN)`` per class from a ``(K, K)`` confusion matrix (rows = target); NaN if absent."""
    cm = _tensor(confusion, torch.float64)
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(confusion: Tensor, classes: Literal["present", "all"] = "present") -> Tensor:
    """mIoU from a ``(K, K)`` confusion matrix (rows = target).

    ``classes="present"`` (default): the mean over the classes that occur in the labels
    or the predictions (a class absent from both has no IoU and is skipped; NaN if no
    class occurs). ``classes="all"``: the mean over all K classes, an absent class
    counting as IoU 0.
    """
    iou = iou_per_class(confusion)
    if classes == "present":
        return iou.nanmean()
    if classes == "all":
        return iou.nan_to_num(0.0).mean()
    raise ValueError(f"mean_iou: classes must be 'present' or 'all', got {classes!r}")


# --------------------------------------------------------------------------- numpy callers
def ece_from_bins(bins: Any) -> float:
    """Top-1 ECE (float) from ``(3, B)`` per-bin sums: pixel count, summed confidence, summed correctness."""
    return float(ece_from_sums(_tensor(bins, torch.float64)))


def miou_from_confusion(confusion: Any, classes: Literal["present", "all"] = "present") -> float:
    """mIoU (float) from a ``(K, K)`` confusion matrix (rows = target); see :func:`mean_iou` for ``classes``."""
    return float(mean_iou(_tensor(confusion, torch.float64), classes))


def pixel_ood_from_histograms(hist: Any) -> dict[str, float]:
    """AP, AUROC and FPR95 (floats) from a ``(2, B)`` histogram (row 0 negatives, row 1 positives, bins ascending).

    Thresholds run over the bins in descending order, so the values are the dataset-level
    SegmentMeIfYouCan definitions up to the bin resolution; NaN without positives or negatives.
    """
    tps, fps, _ = curve_counts_from_histogram(_tensor(hist, torch.float64))
    out = binary_curve_metrics(tps, fps)
    return {"ap": float(out["ap"]), "auroc": float(out["auroc"]), "fpr95": float(out["fpr95"])}


__all__ = [
    "FINE_BINS",
    "adaptive_ece_from_sums",
    "auroc",
    "average_precision",
    "best_f1",
    "bin_sums",
    "binary_curve_metrics",
    "binary_ood_metrics",
    "binned_resolution",
    "resolution_from_counts",
    "confidence_bin",
    "curve_counts_from_histogram",
    "curve_counts_from_scores",
    "ece_from_bins",
    "ece_from_sums",
    "fine_bin_sums",
    "fine_confidence_bin",
    "fpr_at_tpr",
    "iou_per_class",
    "mean_iou",
    "miou_from_confusion",
    "pixel_ood_from_histograms",
    "top1_bin_sums",
]
