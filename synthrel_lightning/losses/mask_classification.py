"""Outlier losses on the per-pixel class scores of mask-classification segmenters (Mask2Former and kin).

A mask-classification model predicts Q masks ``m_q`` with class logits ``c_q`` (K classes and
a no-object class); its per-pixel class scores are
``l_k(x) = Σ_q softmax(c_q)[k] * sigmoid(m_q(x))`` with the no-object class dropped, at the
mask resolution (B,K,h,w). The terms here take those scores, compute the method's anomaly
score at that resolution and upsample it bilinearly (``align_corners=True``) to the
label's size, as the authors' criteria do. The authors also apply them to every auxiliary
decoder layer's outputs: the caller calls the term once per layer.

- :class:`RbALoss`: N. Nayal, M. Yavuz, J. F. Henriques, F. Güney, "RbA: Segmenting Unknown
  Regions Rejected by All", ICCV 2023 (github.com/NazirNayal8/RbA,
  ``mask2former/modeling/criterion.py`` ``outlier_loss``).
- :class:`Mask2AnomalyMarginLoss`: S. N. Rai, F. Cermelli, D. Fontanel, C. Masone, B. Caputo,
  "Unmasking Anomalies in Road-Scene Segmentation" (Mask2Anomaly), ICCV 2023
  (github.com/shyam671/Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation,
  ``mask2former/modeling/criterion.py`` ``loss_ood``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.checks import check_scores_target, masked_mean


def upsample_score(score: Tensor, size: tuple[int, int]) -> Tensor:
    """Score map (B,h,w) resized bilinearly with ``align_corners=True`` to ``size`` (the authors' resize)."""
    return F.interpolate(score[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


class RbALoss(LossTerm):
    """RbA's outlier loss: a squared hinge on the "rejected by all" score (Nayal et al., ICCV 2023).

    ``score = -Σ_k tanh(l_k)`` (RbA's OOD score), upsampled to the label's size; with ``I``
    the pixels that are neither OOD (254) nor void (255) and ``O`` the OOD pixels::

        L = 0.5 [ mean_I relu(score - t_in)^2 + mean_O relu(t_out - score)^2 ]   (batch with OOD pixels)
        L = mean_I relu(score - t_in)^2                                         (batch without)

    with the authors' ``t_in = 0`` (``inlier_upper_threshold``) and ``t_out = 5``
    (``outlier_lower_threshold``), weight 1. ``score_norm`` is the authors' option for
    the per-class normalisation (``"tanh"`` for RbA; ``"sigmoid"``, ``"none"``). An empty
    inlier set contributes 0 (their mean of nothing is NaN).
    """

    requires_mask_classification = True

    def __init__(
        self,
        weight: float = 1.0,
        inlier_upper_threshold: float = 0.0,
        outlier_lower_threshold: float = 5.0,
        score_norm: str = "tanh",
    ) -> None:
        super().__init__(weight)
        if score_norm not in ("tanh", "sigmoid", "none"):
            raise ValueError(f"RbALoss: score_norm must be 'tanh', 'sigmoid' or 'none', got {score_norm!r}")
        self.inlier_upper_threshold = float(inlier_upper_threshold)
        self.outlier_lower_threshold = float(outlier_lower_threshold)
        self.score_norm = score_norm

    @property
    def name(self) -> str:
        """Name used in logged keys (``train/loss_rba``) and ``loss_weights``."""
        return "rba"

    def score(self, class_scores: Tensor) -> Tensor:
        """RbA's OOD score ``-Σ_k norm(l_k)`` (B,h,w) at the scores' resolution."""
        if self.score_norm == "tanh":
            normed = torch.tanh(class_scores)
        elif self.score_norm == "sigmoid":
            normed = torch.sigmoid(class_scores)
        else:
            normed = class_scores
        return -normed.sum(dim=1)

    def forward(self, class_scores: Tensor, target: Tensor) -> Tensor:
        """The squared-hinge outlier loss on mask-classification class scores (B,K,h,w)."""
        check_scores_target(class_scores, target, type(self).__name__)
        score = upsample_score(self.score(class_scores), (target.shape[-2], target.shape[-1]))
        ood = target == OOD_ID
        inlier = ~ood & (target != VOID_ID)
        loss_in = masked_mean(F.relu(score - self.inlier_upper_threshold).square(), inlier)
        loss_out = masked_mean(F.relu(self.outlier_lower_threshold - score).square(), ood)
        return torch.where(ood.any(), 0.5 * (loss_in + loss_out), loss_in)


class Mask2AnomalyMarginLoss(LossTerm):
    """Mask2Anomaly's margin loss on the negative max class score (Rai et al., ICCV 2023).

    ``score = -max_k l_k``, upsampled to the label's size; as in the authors' ``loss_ood``
    (``OOD_LOSS: margin``, ``MARGIN: 1.0``)::

        L = 0.5 [ mean_N score^2 + mean_O relu(margin - score)^2 ]

    where ``O`` are the OOD pixels (254) and ``N`` every other pixel, void (255) included:
    the authors' mask marks OOD pixels only, and their inlier set is its complement. A
    batch without OOD pixels gives ``0.5 mean_N score^2`` (the 0.5 stays, unlike RbA).
    Weight 1 (``OOD_WEIGHT``). As the class scores are non-negative, ``score <= 0``: both
    parts pull ``max_k l_k`` towards 0, and the OOD hinge is active whenever ``margin > 0``;
    this is the authors' code as published, transcribed without change.
    """

    requires_mask_classification = True

    def __init__(self, weight: float = 1.0, margin: float = 1.0) -> None:
        super().__init__(weight)
        self.margin = float(margin)

    @property
    def name(self) -> str:
        """Name used in logged keys (``train/loss_mask2anomaly_margin``) and ``loss_weights``."""
        return "mask2anomaly_margin"

    @staticmethod
    def score(class_scores: Tensor) -> Tensor:
        """Mask2Anomaly's OOD score ``-max_k l_k`` (B,h,w) at the scores' resolution."""
        return -class_scores.amax(dim=1)

    def forward(self, class_scores: Tensor, target: Tensor) -> Tensor:
        """The margin loss on mask-classification class scores (B,K,h,w)."""
        check_scores_target(class_scores, target, type(self).__name__)
        score = upsample_score(self.score(class_scores), (target.shape[-2], target.shape[-1]))
        ood = target == OOD_ID
        loss_in = masked_mean(score.square(), ~ood)
        loss_out = masked_mean(F.relu(self.margin - score).square(), ood)
        return 0.5 * (loss_in + loss_out)


__all__ = ["Mask2AnomalyMarginLoss", "RbALoss", "upsample_score"]
