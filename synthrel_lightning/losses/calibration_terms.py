"""Calibration-aware classification terms on inlier pixels; they replace or complement CrossEntropy.

OOD (254) and void (255) pixels are ignored; a batch without inliers gives an exact zero
that keeps the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.losses._pixels import masked_mean, split_pixels
from synthrel_lightning.losses.base import LossTerm


def _inlier_log_probs(logits: Tensor, target: Tensor, who: str) -> tuple[Tensor, Tensor, Tensor]:
    """(inlier mask, log-softmax (B,K,H,W), log-probability of the target class (B,H,W))."""
    inlier, _ = split_pixels(logits, target, who)
    logp = torch.log_softmax(logits, dim=1)
    # Non-inlier targets point at class 0; those pixels are masked out afterwards.
    safe = torch.where(inlier, target, torch.zeros_like(target)).long()
    logp_t = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    return inlier, logp, logp_t


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

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean smoothed cross-entropy over inlier pixels."""
        inlier, logp, logp_t = _inlier_log_probs(logits, target, type(self).__name__)
        per_pixel = -(1.0 - self.smoothing) * logp_t - self.smoothing * logp.mean(dim=1)
        return masked_mean(per_pixel, inlier)


class FocalLoss(LossTerm):
    """Focal loss (Lin et al. 2017; calibration: Mukhoti et al. 2020): ``mean_I -(1-p_y)^γ log p_y``."""

    def __init__(self, weight: float = 1.0, gamma: float = 2.0) -> None:
        super().__init__(weight)
        if gamma < 0:
            raise ValueError(f"FocalLoss: gamma must be >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean focal loss over inlier pixels."""
        inlier, _, logp_t = _inlier_log_probs(logits, target, type(self).__name__)
        # 1 - exp(logp) loses precision near p=1; -expm1 does not.
        per_pixel = -(-torch.expm1(logp_t)).clamp_min(0).pow(self.gamma) * logp_t
        return masked_mean(per_pixel, inlier)


class MarginLabelSmoothing(LossTerm):
    """Margin-based label smoothing (MbLS, Liu et al. CVPR 2022).

    ``L = mean_I [ -log p_y + α R(z) ]`` with the logit-distance penalty
    ``R(z) = Σ_k relu(max_j z_j - z_k - m)``. The paper writes the sum over classes;
    the authors' code averages over classes instead, which is
    ``class_reduction="mean"`` (the same as ``α/K`` with the sum).
    """

    def __init__(
        self, weight: float = 1.0, margin: float = 10.0, alpha: float = 0.1, class_reduction: str = "sum"
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

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean of cross-entropy plus the margin penalty over inlier pixels."""
        inlier, _, logp_t = _inlier_log_probs(logits, target, type(self).__name__)
        gaps = F.relu(logits.amax(dim=1, keepdim=True) - logits - self.margin)
        penalty = gaps.sum(dim=1) if self.class_reduction == "sum" else gaps.mean(dim=1)
        return masked_mean(-logp_t + self.alpha * penalty, inlier)
