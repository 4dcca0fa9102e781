"""Training-loss terms: cross-entropy, outlier exposure and calibration terms."""

from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.cross_entropy import CrossEntropy

__all__ = ["LossTerm", "CrossEntropy"]
