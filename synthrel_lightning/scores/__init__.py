"""Pixel-wise OOD scores: each maps per-pixel class scores ``(B, K, H, W)`` to ``(B, H, W)``, higher = more OOD.

* :mod:`~synthrel_lightning.scores.protocol`: the score protocol (:class:`OODScore`, :class:`StatefulScore`).
* :mod:`~synthrel_lightning.scores.pixel`: stateless scores (MSP, max logit, entropy, energy,
  sigmoid sum; RbA and Mask2Anomaly on mask-classification models).
* :mod:`~synthrel_lightning.scores.sml`: standardized max logits with boundary suppression and dilated smoothing.
* :mod:`~synthrel_lightning.scores.names`: the score names and the error for an unknown one.
* :mod:`~synthrel_lightning.scores.registry`: scores by name.
"""

from synthrel_lightning.scores.pixel import OODScorer
from synthrel_lightning.scores.protocol import ModuleScore, OODScore, OutputKind, StatefulScore
from synthrel_lightning.scores.registry import (
    SCORE_NAMES,
    STATELESS_SCORE_NAMES,
    ScoreName,
    build_scorer,
    ood_score,
    unknown_score,
)
from synthrel_lightning.scores.sml import StandardizedMaxLogit

__all__ = [
    "SCORE_NAMES",
    "STATELESS_SCORE_NAMES",
    "ModuleScore",
    "OODScore",
    "OODScorer",
    "OutputKind",
    "ScoreName",
    "StandardizedMaxLogit",
    "StatefulScore",
    "build_scorer",
    "ood_score",
    "unknown_score",
]
