"""Cross-entropy on in-distribution pixels (void and OOD pixels ignored)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.losses.base import LossTerm, check_logits_target, finite_mean


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
