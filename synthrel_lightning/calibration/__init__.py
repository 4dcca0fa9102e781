"""Post-hoc temperature scaling: fit one global temperature on held-out (e.g. synthetic) logits.

* :mod:`~synthrel_lightning.calibration.temperature`: the fit (the paper's ECE grid search or NLL/LBFGS).
* :mod:`~synthrel_lightning.calibration.grid`: top-1 bin sums for a whole temperature grid, vectorised.
* :mod:`~synthrel_lightning.calibration.sampling`: the seeded per-frame pixel sample (20,000 per frame by default).
* :mod:`~synthrel_lightning.calibration.logits`: logits streamed from a model, a pixel reservoir.
* :mod:`~synthrel_lightning.calibration.checkpoint`: a calibrated copy of a Lightning checkpoint
  (the ``calibrate`` command).
"""

from synthrel_lightning.calibration.checkpoint import CalibrationReport, calibrate
from synthrel_lightning.calibration.grid import grid_bin_sums, grid_bin_sums_reference
from synthrel_lightning.calibration.logits import LogitBatches, PixelReservoir, collect_logits
from synthrel_lightning.calibration.sampling import DEFAULT_PIXELS_PER_IMAGE, PixelsPerImage, frame_pixels
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
    "DEFAULT_PIXELS_PER_IMAGE",
    "PAPER_GRID",
    "CalibrationReport",
    "FitMethod",
    "LogitBatches",
    "PixelReservoir",
    "PixelsPerImage",
    "TemperatureFit",
    "calibrate",
    "collect_logits",
    "ece_by_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "frame_pixels",
    "grid_bin_sums",
    "grid_bin_sums_reference",
    "temperature_grid",
]
