"""Calibration-aware classification terms on inlier pixels; they replace or complement CrossEntropy.

Label smoothing (C. Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016), focal
loss (T.-Y. Lin et al., ICCV 2017; for calibration J. Mukhoti et al., NeurIPS 2020) and
margin-based label smoothing (B. Liu et al., "The Devil is in the Margin: Margin-based Label
Smoothing for Network Calibration", CVPR 2022, github.com/by-liu/MbLS).

OOD (254) and void (255) pixels are ignored; a batch without inliers gives an exact zero
that keeps the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.stats import PixelStats


def _log_prob_target(stats: PixelStats) -> Tensor:
    """Log-probability of the target class per pixel (B,H,W): ``z_y - logsumexp(z)``."""
    return stats.need("target_logit") - stats.need("lse")


class LabelSmoothingCE(LossTerm):
    """Cross-entropy with label smoothing: ``mean_I [(1-ε) (-log p_y) + ε mean_k(-log p_k)]``.

    The smoothed target puts ``1-ε+ε/K`` on the label and ``ε/K`` on every class
    (the convention of ``torch.nn.functional.cross_entropy(label_smoothing=ε)``).
    """

    def __init__(self, weight: float = 1.0, smoothing: float = 0.1) -> None:
        super().__init__(weight)
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"LabelSmoothingCE: smoothing must be in [0, 1], got {smoothing!r}")
        self.smoothing = float(smoothing)

    @property
    def name(self) -> str:
        """Name used in logged keys (``train/loss_label_smoothing_ce``)."""
        return "label_smoothing_ce"

    stats_needed = frozenset({"lse", "mean", "target_logit"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean smoothed cross-entropy over inlier pixels."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """Mean smoothed cross-entropy over inlier pixels, from shared statistics."""
        mean_logp = stats.need("mean") - stats.need("lse")
        per_pixel = -(1.0 - self.smoothing) * _log_prob_target(stats) - self.smoothing * mean_logp
        return stats.inlier_mean(per_pixel)


class FocalLoss(LossTerm):
    """Focal loss (Lin et al. 2017; calibration: Mukhoti et al. 2020): ``mean_I -(1-p_y)^γ log p_y``."""

    def __init__(self, weight: float = 1.0, gamma: float = 2.0) -> None:
        super().__init__(weight)
        if gamma < 0:
            raise ValueError(f"FocalLoss: gamma must be >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    stats_needed = frozenset({"lse", "target_logit"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean focal loss over inlier pixels."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """Mean focal loss over inlier pixels, from shared statistics."""
        logp_t = _log_prob_target(stats)
        # 1 - exp(logp) loses precision near p=1; -expm1 does not.
        per_pixel = -(-torch.expm1(logp_t)).clamp_min(0).pow(self.gamma) * logp_t
        return stats.inlier_mean(per_pixel)


class MarginLabelSmoothing(LossTerm):
    """Margin-based label smoothing (MbLS: B. Liu, I. Ben Ayed, A. Galdran, J. Dolz, CVPR 2022).

    ``L = mean_I [ -log p_y + α R(z) ]`` with the logit-distance penalty
    ``R(z) = mean_k relu(max_j z_j - z_k - m)``, ``m = 10``, ``α = 0.1``: the authors' code
    (github.com/by-liu/MbLS, ``calibrate/losses/logit_margin_l1.py`` ``LogitMarginL1``)
    averages the penalty over classes. The paper writes a sum over classes, which is
    ``class_reduction="sum"`` (the same as ``K α`` with the mean).
    """

    def __init__(
        self, weight: float = 1.0, margin: float = 10.0, alpha: float = 0.1, class_reduction: str = "mean"
    ) -> None:
        super().__init__(weight)
        if margin < 0:
            raise ValueError(f"MarginLabelSmoothing: margin must be >= 0, got {margin!r}")
        if alpha < 0:
            raise ValueError(f"MarginLabelSmoothing: alpha must be >= 0, got {alpha!r}")
        if class_reduction not in ("sum", "mean"):
            raise ValueError(f"MarginLabelSmoothing: class_reduction must be 'sum' or 'mean', got {class_reduction!r}")
        self.margin = float(margin)
        self.alpha = float(alpha)
        self.class_reduction = class_reduction

    stats_needed = frozenset({"lse", "max", "target_logit"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean of cross-entropy plus the margin penalty over inlier pixels."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """Mean of cross-entropy plus the margin penalty over inlier pixels, from shared statistics."""
        gaps = F.relu(stats.need("max").unsqueeze(1) - stats.logits - self.margin)
        penalty = gaps.sum(dim=1) if self.class_reduction == "sum" else gaps.mean(dim=1)
        return stats.inlier_mean(-_log_prob_target(stats) + self.alpha * penalty)
