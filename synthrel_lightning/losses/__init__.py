"""Training-loss terms: cross-entropy, outlier exposure, OOD fine-tuning and calibration terms.

Each term is a :class:`LossTerm` with a ``weight``; a segmenter sums ``weight * term``.
Published methods carry their authors' names and compute what the authors' code computes;
extensions of this library say so in their docstrings. In a LightningCLI recipe::

    losses:
      - class_path: synthrel_lightning.losses.CrossEntropy
      - class_path: synthrel_lightning.losses.EnergyHinge
        init_args: {weight: 0.1}

Modules (imports run one way: ``checks`` <- ``stats`` <- ``base`` <- terms, ``objective``):
``checks`` input checks; ``stats`` shared per-pixel statistics; ``base`` the term
interface; ``objective`` evaluation of a list of terms; ``cross_entropy``,
``outlier_exposure`` (Hendrycks OE, Meta-OoD), ``energy`` (PEBAL, RPL), ``abstention``
(PEBAL's gambler loss), ``mask_classification`` (RbA, Mask2Anomaly), ``rejection``
(extensions for per-pixel logits), ``calibration_terms`` (label smoothing, focal, MbLS).
"""

from synthrel_lightning.losses.abstention import GamblerLoss
from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.calibration_terms import (
    FocalLoss,
    LabelSmoothingCE,
    MarginLabelSmoothing,
)
from synthrel_lightning.losses.cross_entropy import CrossEntropy
from synthrel_lightning.losses.energy import EnergyHinge, EnergyHingeEstimatedMargins, PositiveEnergy
from synthrel_lightning.losses.mask_classification import Mask2AnomalyMarginLoss, RbALoss
from synthrel_lightning.losses.objective import check_target_values, evaluate_terms
from synthrel_lightning.losses.outlier_exposure import MetaOoD, UniformOutlierExposure
from synthrel_lightning.losses.rejection import MaxSoftmaxMargin, SigmoidSumRejection
from synthrel_lightning.losses.stats import STAT_NAMES, PixelStats

__all__ = [
    "STAT_NAMES",
    "CrossEntropy",
    "EnergyHinge",
    "EnergyHingeEstimatedMargins",
    "FocalLoss",
    "GamblerLoss",
    "LabelSmoothingCE",
    "LossTerm",
    "MarginLabelSmoothing",
    "Mask2AnomalyMarginLoss",
    "MaxSoftmaxMargin",
    "MetaOoD",
    "PixelStats",
    "PositiveEnergy",
    "RbALoss",
    "SigmoidSumRejection",
    "UniformOutlierExposure",
    "check_target_values",
    "evaluate_terms",
]
