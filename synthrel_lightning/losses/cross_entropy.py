"""Cross-entropy on in-distribution pixels (void and OOD pixels ignored)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.checks import check_logits_target, finite_mean
from synthrel_lightning.losses.stats import PixelStats


class CrossEntropy(LossTerm):
    """Pixel-wise cross-entropy over the train ids; OOD (254) and void (255) pixels are ignored."""

    def __init__(self, weight: float = 1.0, class_weights: list[float] | None = None) -> None:
        super().__init__(weight)
        self.class_weights = class_weights

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        check_logits_target(logits, target, "CrossEntropy")
        target = target.long()
        inlier = target < logits.shape[1]
        bad = ~inlier & (target != VOID_ID) & (target != OOD_ID)
        if bad.any():
            raise ValueError(
                f"CrossEntropy: target holds values {sorted(target[bad].unique().tolist())[:10]} outside "
                f"0..{logits.shape[1] - 1}, {OOD_ID} (OOD) and {VOID_ID} (void)"
            )
        t = target.masked_fill(~inlier, VOID_ID)
        w = None if self.class_weights is None else logits.new_tensor(self.class_weights)
        if not inlier.any():
            return finite_mean(logits.new_empty(0), logits)
        return F.cross_entropy(logits, t, weight=w, ignore_index=VOID_ID)

    stats_needed = frozenset({"lse", "target_logit"})

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """The same cross-entropy from shared statistics: ``lse - z_y`` averaged over inliers."""
        nll = stats.need("lse") - stats.need("target_logit")
        if self.class_weights is None:
            return stats.inlier_mean(nll)
        if len(self.class_weights) != stats.num_classes:
            raise ValueError(
                f"CrossEntropy: class_weights has {len(self.class_weights)} entries, expected one per class "
                f"({stats.num_classes})"
            )
        # The weighted mean of F.cross_entropy: Σ w_y nll / Σ w_y over inliers.
        w = stats.logits.new_tensor(self.class_weights)[stats.safe_target]
        w = torch.where(stats.inlier, w, w.new_zeros(()))
        total = w.sum()
        return (w * nll).sum() / torch.where(total > 0, total, total.new_ones(()))
