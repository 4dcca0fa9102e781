"""Post-hoc temperature scaling: one global temperature, one per image cluster, or one per pixel.

* :mod:`~synthrel_lightning.calibration.temperature`: the fit (the paper's ECE grid search or NLL/LBFGS).
* :mod:`~synthrel_lightning.calibration.grid`: top-1 bin sums for a whole temperature grid, vectorised.
* :mod:`~synthrel_lightning.calibration.sampling`: the seeded per-frame pixel sample (20,000 per frame by default).
* :mod:`~synthrel_lightning.calibration.logits`: logits streamed from a model, a pixel reservoir.
* :mod:`~synthrel_lightning.calibration.grid_search`: the ECE grid search, extended beyond an edge.
* :mod:`~synthrel_lightning.calibration.clustered`, :mod:`~synthrel_lightning.calibration.features`:
  clustered temperature scaling (relis).
* :mod:`~synthrel_lightning.calibration.local`: local temperature scaling (relis' LTS network).
* :mod:`~synthrel_lightning.calibration.calibrator`: calibrators applied at test time.
* :mod:`~synthrel_lightning.calibration.checkpoint`: a calibrated copy of a Lightning checkpoint
  (the ``calibrate`` command).
"""

from synthrel_lightning.calibration.checkpoint import CalibrationReport, calibrate, load_calibrator
from synthrel_lightning.calibration.clustered import ClusteredTemperature, fit_clustered_temperature
from synthrel_lightning.calibration.grid import grid_bin_sums, grid_bin_sums_reference
from synthrel_lightning.calibration.local import LocalTemperatureNetwork, fit_local_temperature
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
    "ClusteredTemperature",
    "LocalTemperatureNetwork",
    "FitMethod",
    "LogitBatches",
    "PixelReservoir",
    "PixelsPerImage",
    "TemperatureFit",
    "calibrate",
    "collect_logits",
    "ece_by_temperature",
    "fit_clustered_temperature",
    "fit_local_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "frame_pixels",
    "grid_bin_sums",
    "grid_bin_sums_reference",
    "load_calibrator",
    "temperature_grid",
]
