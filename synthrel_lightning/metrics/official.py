"""The official SegmentMeIfYouCan aggregation of pixel OOD scores: per-frame percentile bins merged over frames.

The benchmark code (https://github.com/SegmentMeIfYouCan/road-anomaly-benchmark,
``road_anomaly_benchmark/metrics/pixel_classification.py``, metric ``PixBinaryClass``, and
``pixel_classification_curves.py``, ``curves_from_cmats``) does not sort the dataset's pixels.
For each frame, on the region of interest (label != 255) of the float16 score map it stores:

* bin edges: the frame's minimum and maximum widened by ``eps = max(1e-2 * range, 1e-2)``, the
  ``min(384, P)`` evenly spaced quantiles (numpy's linear interpolation) of its OOD scores and
  the ``min(384, N)`` of its in-distribution scores, sorted and deduplicated (768 bins in all);
* per bin ``[e_k, e_{k+1})`` (the last one closed) its OOD and in-distribution counts, with the
  bin's lower edge ``e_k`` as its threshold.

The bins of all frames are then sorted by threshold, highest first, and accumulated into
confusion counts; of a run of equal thresholds only the last entry is kept (and the first
entry of all). The curve gets the point (0, 0) in front; precision is 1 where nothing is
predicted. ``ap = sum diff(recall) * precision[1:]``, ``auroc`` the trapezoid rule, ``fpr95`` the
FPR at the first point with TPR >= 0.95 (``searchsorted``), ``best_f1`` the highest
``2 TP / (2 TP + FP + FN)`` and ``best_f1_threshold`` its bin's lower edge. The component
metrics then predict ``score > best_f1_threshold`` on the float16 scores.

These numbers are what the leaderboard reports; they differ from the exact definitions
(:class:`~synthrel_lightning.metrics.PixelOODMetrics` with ``aggregation="exact"``) because every
frame's pixels between two of its quantiles share one threshold.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

OFFICIAL_BINS = 768
"""Bins per frame of the benchmark's ``PixBinaryClass`` metric (half from OOD, half from in-distribution scores)."""

AGGREGATIONS: tuple[str, ...] = ("exact", "official")
"""``exact``: the definitions over all pixels (sorted or finely binned); ``official``: the benchmark's binning."""


def check_aggregation(aggregation: str, who: str) -> str:
    """``aggregation`` if it is a known name; a clear error listing the valid ones otherwise."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"{who}: unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
    return aggregation


def official_frame_bins(scores: Tensor, target: Tensor, ignore_index: int = 255) -> tuple[np.ndarray, ...] | None:
    """One frame's bins: ``(thresholds, ood_counts, in_counts)``, thresholds descending (float64); None without ROI.

    ``scores`` (H, W) any float dtype (rounded to float16, as in the benchmark's score files);
    ``target`` (H, W) 0 / 1 / ``ignore_index``.
    """
    roi = (target != ignore_index).cpu().numpy()
    if not roi.any():
        return None
    values = scores.detach().float().cpu().numpy().astype(np.float16)[roi]
    ood = target.cpu().numpy()[roi] == 1
    at_ood, at_in = values[ood], values[~ood]
    low, high = values.min(), values.max()
    eps = np.maximum((high - low) * 1e-2, 1e-2)  # float16 arithmetic, as on the stored maps
    parts = [np.array([low - eps, high + eps])]
    for group in (at_ood, at_in):
        if group.size:
            parts.append(np.quantile(group, np.linspace(0, 1, min(OFFICIAL_BINS // 2, group.size))))
    edges = np.unique(np.concatenate(parts))
    ood_counts = np.histogram(at_ood, bins=edges)[0]
    in_counts = np.histogram(at_in, bins=edges)[0]
    return edges[:-1][::-1].astype(np.float64), ood_counts[::-1].astype(np.int64), in_counts[::-1].astype(np.int64)


def official_curve(thresholds: np.ndarray, ood_counts: np.ndarray, in_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Cumulative ``tp``, ``fp`` and ``thresholds`` of the merged bins (frames concatenated in order)."""
    order = np.argsort(thresholds)[::-1]
    thresholds = thresholds[order]
    tp = np.cumsum(ood_counts[order].astype(np.float64))
    fp = np.cumsum(in_counts[order].astype(np.float64))
    last_of_run = np.nonzero(thresholds[:-1] != thresholds[1:])[0]
    keep = np.concatenate([[0], last_of_run, [len(thresholds) - 1]])
    tp, fp, thresholds = tp[keep], fp[keep], thresholds[keep]
    if tp[0] != 0 or fp[0] != 0:
        tp, fp = np.concatenate([[0.0], tp]), np.concatenate([[0.0], fp])
        thresholds = np.concatenate([[float(thresholds.max()) + 1], thresholds])
    return {"tp": tp, "fp": fp, "thresholds": thresholds}


def official_metrics(thresholds: np.ndarray, ood_counts: np.ndarray, in_counts: np.ndarray) -> dict[str, float]:
    """``auroc``, ``ap``, ``fpr95``, ``best_f1``, ``best_f1_threshold`` of the merged bins, as the benchmark reports."""
    curve = official_curve(thresholds, ood_counts, in_counts)
    tp, fp, thr = curve["tp"], curve["fp"], curve["thresholds"]
    n_pos, n_neg = tp[-1], fp[-1]
    tpr, fpr = tp / n_pos, fp / n_neg
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.ones_like(tp), where=predicted > 0)
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    best = int(np.nanargmax(f1))
    at95 = int(np.searchsorted(tpr, 0.95))
    return {
        "auroc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)),
        "ap": float(np.sum(np.diff(tpr) * precision[1:])),
        "fpr95": float(fpr[at95]) if at95 < len(tpr) else 1.0,
        "best_f1": float(f1[best]),
        "best_f1_threshold": float(thr[best]),
    }


__all__ = [
    "AGGREGATIONS",
    "OFFICIAL_BINS",
    "check_aggregation",
    "official_curve",
    "official_frame_bins",
    "official_metrics",
]
