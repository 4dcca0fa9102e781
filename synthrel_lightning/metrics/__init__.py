"""torchmetrics ``Metric`` subclasses for OOD segmentation: pixel OOD, component, calibration, IoU.

All states reduce by sum across processes (except the exact pixel mode, which
concatenates scores), so the metrics work in any Lightning / DDP setup.
"""

from synthrel_lightning.metrics.calibration import CalibrationMetrics, equal_mass_ece
from synthrel_lightning.metrics.components import (
    SIOU_THRESHOLDS,
    TRACK_SIZES,
    ComponentMetrics,
    frame_component_stats,
)
from synthrel_lightning.metrics.pixel import NotComputableError, PixelOODMetrics, curve_metrics, pixel_ood_metrics
from synthrel_lightning.metrics.segmentation import SegmentationIoU

__all__ = [
    "SIOU_THRESHOLDS",
    "TRACK_SIZES",
    "CalibrationMetrics",
    "ComponentMetrics",
    "NotComputableError",
    "PixelOODMetrics",
    "SegmentationIoU",
    "curve_metrics",
    "equal_mass_ece",
    "frame_component_stats",
    "pixel_ood_metrics",
]
