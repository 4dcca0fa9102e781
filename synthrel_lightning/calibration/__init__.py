"""Post-hoc temperature scaling: fit one global temperature on held-out (e.g. synthetic) logits.

* :mod:`~synthrel_lightning.calibration.temperature`: the fit (the paper's ECE grid search or NLL/LBFGS).
* :mod:`~synthrel_lightning.calibration.logits`: logits streamed from a model, checked, subsampled.
* :mod:`~synthrel_lightning.calibration.checkpoint`: a calibrated copy of a Lightning checkpoint
  (the ``calibrate`` command).
"""

from synthrel_lightning.calibration.checkpoint import CalibrationReport, calibrate
from synthrel_lightning.calibration.logits import LogitBatches, PixelReservoir, collect_logits
from synthrel_lightning.calibration.temperature import (
    PAPER_GRID,
    FitMethod,
    TemperatureFit,
    ece_by_temperature,
    expected_calibration_error,
    fit_temperature,
    temperature_grid,
)

__all__ = [
    "PAPER_GRID",
    "CalibrationReport",
    "FitMethod",
    "LogitBatches",
    "PixelReservoir",
    "TemperatureFit",
    "calibrate",
    "collect_logits",
    "ece_by_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "temperature_grid",
]
