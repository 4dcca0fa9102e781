"""Training-loss terms: cross-entropy, outlier exposure and calibration terms.

Each term is a :class:`LossTerm` with a ``weight``; a segmenter sums ``weight * term``.
In a LightningCLI recipe::

    losses:
      - class_path: synthrel_lightning.losses.CrossEntropy
      - class_path: synthrel_lightning.losses.EnergyHinge
        init_args: {weight: 0.1}
"""

from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.calibration_terms import (
    FocalLoss,
    LabelSmoothingCE,
    MarginLabelSmoothing,
)
from synthrel_lightning.losses.cross_entropy import CrossEntropy
from synthrel_lightning.losses.outlier_exposure import (
    EnergyHinge,
    MaxScoreMargin,
    PositiveEnergy,
    RbARejection,
    UniformOutlierExposure,
    meta_ood_losses,
)
from synthrel_lightning.losses.stats import (
    STAT_NAMES,
    PixelStats,
    check_target_values,
    evaluate_terms,
)

__all__ = [
    "STAT_NAMES",
    "CrossEntropy",
    "EnergyHinge",
    "FocalLoss",
    "LabelSmoothingCE",
    "LossTerm",
    "MarginLabelSmoothing",
    "MaxScoreMargin",
    "PixelStats",
    "PositiveEnergy",
    "RbARejection",
    "UniformOutlierExposure",
    "check_target_values",
    "evaluate_terms",
    "meta_ood_losses",
]
