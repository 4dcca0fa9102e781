"""The metric groups computed per evaluation set.

``misclassification`` (on sets with class labels): PRR as relis computes it, AURC and AUGRC as
torch-uncertainty computes them (:class:`~synthrel_lightning.metrics.MisclassificationMetrics`,
max-probability confidence of the temperature-scaled class scores), logged as ``prr``, ``aurc``,
``augrc``.

The component metrics (sIoU, PPV, mean F1) need the set's best-F1 threshold, known only after the
whole set: :class:`~synthrel_lightning.models.OODSegmenter` runs a second pass over the set's loader
at the end of the epoch instead of keeping per-pixel scores (which for Fishyscapes L&F at full size
would take several GB). Measured on the demo (TinySegmenter, 32 frames with objects at 128x256, a
shared CPU): ``validate`` took 33-35 s without the component metrics and 34-45 s with them.
"""

from __future__ import annotations

from typing import Literal, cast, get_args

from torch import nn

MetricGroup = Literal["segmentation", "calibration", "misclassification", "pixel_ood", "components"]
"""Metric groups an evaluation set can compute."""

METRIC_GROUPS: tuple[str, ...] = get_args(MetricGroup)
DEFAULT_METRICS: tuple[str, ...] = METRIC_GROUPS
"""By default every set computes all groups (OOD groups only where it has OOD labels)."""


OODMetricMode = Literal["binned", "exact", "official"]
OOD_METRIC_MODES: tuple[str, ...] = get_args(OODMetricMode)
"""``binned`` / ``exact``: the exact definitions (constant-memory bins or every pixel kept); ``official``:
the SegmentMeIfYouCan benchmark's own aggregation (per-frame percentile bins, its best-F1 threshold
and ``>`` comparison), which reproduces leaderboard numbers."""


def check_ood_metric_mode(mode: str, who: str) -> OODMetricMode:
    """``mode`` if it is one of :data:`OOD_METRIC_MODES`; an error listing them otherwise."""
    if mode not in OOD_METRIC_MODES:
        raise ValueError(f"{who}: unknown ood_metric_mode {mode!r}; valid: {', '.join(OOD_METRIC_MODES)}")
    return cast(OODMetricMode, mode)  # one of OOD_METRIC_MODES, checked above


def check_metric_groups(groups: list[str], who: str) -> list[str]:
    """``groups`` if every name is a metric group; a clear error otherwise."""
    unknown = [g for g in groups if g not in METRIC_GROUPS]
    if unknown:
        raise ValueError(f"{who}: unknown metric groups {unknown}; valid: {', '.join(METRIC_GROUPS)}")
    if "components" in groups and "pixel_ood" not in groups:
        raise ValueError(f"{who}: 'components' needs 'pixel_ood' (its threshold is the set's best-F1 threshold)")
    return list(groups)


def build_set_metrics(
    groups: list[str],
    num_classes: int,
    class_names: list[str],
    ood_metric_mode: OODMetricMode,
    calibration_bins: int,
    ood_protocol: str,
    track: Literal["anomaly", "obstacle"],
) -> nn.ModuleDict:
    """One metric module per group (``pixel_ood`` follows ``ood_protocol``)."""
    from synthrel_lightning.metrics import (
        CalibrationMetrics,
        ComponentMetrics,
        MisclassificationMetrics,
        PixelOODMetrics,
        SegmentationIoU,
    )

    check_ood_metric_mode(ood_metric_mode, "build_set_metrics")
    official = ood_metric_mode == "official"
    storage: Literal["binned", "exact"] = "exact" if ood_metric_mode == "exact" else "binned"
    metrics = nn.ModuleDict()
    if "segmentation" in groups:
        metrics["segmentation"] = SegmentationIoU(num_classes=num_classes, class_names=class_names)
    if "calibration" in groups:
        metrics["calibration"] = CalibrationMetrics(num_bins=calibration_bins)
    if "misclassification" in groups:
        metrics["misclassification"] = MisclassificationMetrics(mode=storage)
    if "pixel_ood" in groups:
        metrics["pixel_ood"] = PixelOODMetrics(mode=storage, aggregation="official" if official else "exact")
        if ood_protocol == "paper":
            from synthrel_lightning.models.paper_protocol import PerImageOODMetrics

            metrics["paper_ood"] = PerImageOODMetrics()
    if "components" in groups:
        metrics["components"] = ComponentMetrics(track=track, aggregation="official" if official else "exact")
    return metrics


__all__ = [
    "DEFAULT_METRICS",
    "METRIC_GROUPS",
    "OOD_METRIC_MODES",
    "check_ood_metric_mode",
    "MetricGroup",
    "build_set_metrics",
    "check_metric_groups",
]
