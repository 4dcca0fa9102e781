"""The paper's study: calibration with synthetic domains, the fine-tuning comparison, and their tables."""

from synthrel_lightning.study.calibration_stats import SetCalibrationStats, calibration_stats
from synthrel_lightning.study.calibration_study import (
    CalibrationRow,
    CalibrationStudyResult,
    DomainPair,
    calibration_rows_from_logits,
    calibration_rows_from_stats,
    run_calibration_study,
)
from synthrel_lightning.study.finetune_study import FINETUNE_RECIPES, finetune_table

__all__ = [
    "FINETUNE_RECIPES",
    "CalibrationRow",
    "CalibrationStudyResult",
    "DomainPair",
    "SetCalibrationStats",
    "calibration_rows_from_logits",
    "calibration_rows_from_stats",
    "calibration_stats",
    "finetune_table",
    "run_calibration_study",
]
