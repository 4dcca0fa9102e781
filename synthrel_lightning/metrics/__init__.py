"""torchmetrics ``Metric`` subclasses for OOD segmentation: pixel OOD, component, calibration, IoU.

Their arithmetic lives once in :mod:`synthrel_lightning.metrics.functional`; the binned pixel
metric's score keys and bin layouts in :mod:`synthrel_lightning.metrics.score_bins`.

All states reduce by sum across processes (except the pixel metric: its exact
mode concatenates scores, its binned mode merges histograms over a common bin
layout), so the metrics work in any Lightning / DDP setup.
"""

from synthrel_lightning.metrics.calibration import CalibrationMetrics
from synthrel_lightning.metrics.components import (
    SIOU_THRESHOLDS,
    TRACK_SIZES,
    ComponentMetrics,
    frame_component_stats,
)
from synthrel_lightning.metrics.misclassification import MisclassificationMetrics
from synthrel_lightning.metrics.pixel import NotComputableError, PixelOODMetrics, pixel_ood_metrics
from synthrel_lightning.metrics.segmentation import SegmentationIoU

__all__ = [
    "SIOU_THRESHOLDS",
    "TRACK_SIZES",
    "CalibrationMetrics",
    "ComponentMetrics",
    "MisclassificationMetrics",
    "NotComputableError",
    "PixelOODMetrics",
    "SegmentationIoU",
    "frame_component_stats",
    "pixel_ood_metrics",
]
