"""Benchmark submissions: OOD score maps in the SegmentMeIfYouCan file layout, a Fishyscapes estimator."""

from __future__ import annotations

from synthrel_lightning.export.fishyscapes import FishyscapesEstimator
from synthrel_lightning.export.smiyc import (
    SMIYC_DATASETS,
    SMIYC_FOLDERS,
    export_smiyc,
    export_smiyc_folder,
    read_smiyc_score,
    smiyc_folder,
    smiyc_path,
    write_smiyc_score,
)

__all__ = [
    "FishyscapesEstimator",
    "SMIYC_DATASETS",
    "SMIYC_FOLDERS",
    "export_smiyc",
    "export_smiyc_folder",
    "read_smiyc_score",
    "smiyc_folder",
    "smiyc_path",
    "write_smiyc_score",
]
