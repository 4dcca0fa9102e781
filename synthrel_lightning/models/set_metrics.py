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

from typing import Literal, get_args

from torch import nn

MetricGroup = Literal["segmentation", "calibration", "misclassification", "pixel_ood", "components"]
"""Metric groups an evaluation set can compute."""

METRIC_GROUPS: tuple[str, ...] = get_args(MetricGroup)
DEFAULT_METRICS: tuple[str, ...] = METRIC_GROUPS
"""By default every set computes all groups (OOD groups only where it has OOD labels)."""


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
    ood_metric_mode: str,
    calibration_bins: int,
    ood_protocol: str,
    track: str,
) -> nn.ModuleDict:
    """One metric module per group (``pixel_ood`` follows ``ood_protocol``)."""
    from synthrel_lightning.metrics import (
        CalibrationMetrics,
        ComponentMetrics,
        MisclassificationMetrics,
        PixelOODMetrics,
        SegmentationIoU,
    )

    metrics = nn.ModuleDict()
    if "segmentation" in groups:
        metrics["segmentation"] = SegmentationIoU(num_classes=num_classes, class_names=class_names)
    if "calibration" in groups:
        metrics["calibration"] = CalibrationMetrics(num_bins=calibration_bins)
    if "misclassification" in groups:
        metrics["misclassification"] = MisclassificationMetrics(mode=ood_metric_mode)
    if "pixel_ood" in groups:
        metrics["pixel_ood"] = PixelOODMetrics(mode=ood_metric_mode)
        if ood_protocol == "paper":
            from synthrel_lightning.models.paper_protocol import PerImageOODMetrics

            metrics["paper_ood"] = PerImageOODMetrics()
    if "components" in groups:
        metrics["components"] = ComponentMetrics(track=track)
    return metrics


__all__ = ["DEFAULT_METRICS", "METRIC_GROUPS", "MetricGroup", "build_set_metrics", "check_metric_groups"]
