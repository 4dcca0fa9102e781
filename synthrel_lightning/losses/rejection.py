"""Rejection losses for per-pixel logits: extensions of this library, not published methods.

Both adapt ideas of mask-classification methods to segmenters with per-pixel logits ``z``
(K classes): :class:`SigmoidSumRejection` lowers the sum of per-class sigmoids on OOD
pixels (in the spirit of RbA's "rejected by all", which is defined on Mask2Former's class
scores: see :class:`~synthrel_lightning.losses.RbALoss`), :class:`MaxSoftmaxMargin` puts a
contrastive margin on the max softmax probability (in the spirit of Mask2Anomaly's margin
loss: see :class:`~synthrel_lightning.losses.Mask2AnomalyMarginLoss`). ``I`` are the inlier
pixels (train id < K), ``O`` the OOD pixels (254); void pixels (255) take part in no term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.stats import PixelStats


class SigmoidSumRejection(LossTerm):
    """Every class rejects OOD pixels: a penalty on ``S(z) = Σ_k sigmoid(z_k)`` (extension).

    ``L = mean_O f(S - ood_margin) + inlier_weight * mean_I f(inlier_margin - S)``,
    where ``f`` is ``softplus`` (``mode="softplus"``, smooth, keeps pushing S down) or
    ``relu`` (``mode="hinge"``, zero once S is below the margin). The optional inlier part
    keeps at least ``inlier_margin`` (default 1: one class accepts the pixel) of class score
    on inliers. The matching OOD score is ``-S``.
    """

    def __init__(
        self,
        weight: float = 1.0,
        mode: str = "softplus",
        ood_margin: float = 0.0,
        inlier_weight: float = 0.0,
        inlier_margin: float = 1.0,
    ) -> None:
        super().__init__(weight)
        if mode not in ("softplus", "hinge"):
            raise ValueError(f"SigmoidSumRejection: mode must be 'softplus' or 'hinge', got {mode!r}")
        if inlier_weight < 0:
            raise ValueError(f"SigmoidSumRejection: inlier_weight must be >= 0, got {inlier_weight!r}")
        self.mode = mode
        self.ood_margin = float(ood_margin)
        self.inlier_weight = float(inlier_weight)
        self.inlier_margin = float(inlier_margin)

    def _f(self, x: Tensor) -> Tensor:
        return F.softplus(x) if self.mode == "softplus" else F.relu(x)

    stats_needed = frozenset({"sigmoid_sum"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Penalty on OOD pixels' summed class scores (and optionally inliers' lack of them)."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """The penalty from shared statistics."""
        s = stats.need("sigmoid_sum")
        loss = stats.ood_mean(self._f(s - self.ood_margin))
        if self.inlier_weight > 0:
            loss = loss + self.inlier_weight * stats.inlier_mean(self._f(self.inlier_margin - s))
        return loss


class MaxSoftmaxMargin(LossTerm):
    """Contrastive margin loss on the max softmax probability (extension).

    With ``p(z) = max_k softmax(z)_k`` and the distance from full confidence
    ``d = 1 - p`` in ``[0, 1 - 1/K]``:
    ``L = inlier_weight * mean_I d^2 + mean_O relu(margin - d)^2``:
    inliers are pulled to full confidence, OOD pixels pushed at least ``margin`` away from
    it (with ``margin=1`` OOD confidence is driven as low as it goes, towards ``1/K``).
    The matching OOD score is MSP.
    """

    def __init__(self, weight: float = 1.0, margin: float = 1.0, inlier_weight: float = 1.0) -> None:
        super().__init__(weight)
        if margin <= 0:
            raise ValueError(f"MaxSoftmaxMargin: margin must be > 0, got {margin!r}")
        if inlier_weight < 0:
            raise ValueError(f"MaxSoftmaxMargin: inlier_weight must be >= 0, got {inlier_weight!r}")
        self.margin = float(margin)
        self.inlier_weight = float(inlier_weight)

    stats_needed = frozenset({"lse", "max"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Squared distance of inliers from full confidence plus squared hinge on OOD pixels."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """The margin loss from shared statistics."""
        d = 1.0 - torch.exp(stats.need("max") - stats.need("lse"))
        loss = stats.ood_mean(F.relu(self.margin - d).square())
        if self.inlier_weight > 0:
            loss = loss + self.inlier_weight * stats.inlier_mean(d.square())
        return loss


__all__ = ["MaxSoftmaxMargin", "SigmoidSumRejection"]
