"""The per-image OOD protocol of the synthetic-data paper: AUROC, AP, FPR95 per image, averaged over images."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from synthrel_lightning.labels import VOID_ID
from synthrel_lightning.metrics import pixel_ood_metrics


class PerImageOODMetrics(Metric):
    """Mean over images of each image's exact AUROC / AP / FPR95, void pixels counted as negatives.

    Images without OOD pixels (or without negatives) have no such metrics and are skipped; the
    benchmark protocol (:class:`~synthrel_lightning.metrics.PixelOODMetrics`) pools all pixels of the
    set instead and leaves void out.
    """

    is_differentiable = False
    full_state_update = False
    sums: Tensor
    images: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sums", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, scores: Tensor, ood: Tensor) -> None:
        """Add images: scores (B,H,W), ood (B,H,W) 0 / 1 / 255 (255 becomes 0)."""
        target = torch.where(ood == VOID_ID, torch.zeros_like(ood), ood)
        for s, t in zip(scores, target):
            n_pos = int((t == 1).sum())
            if n_pos == 0 or n_pos == t.numel():
                continue
            m = pixel_ood_metrics(s.float(), t)
            self.sums += torch.stack([m["auroc"], m["ap"], m["fpr95"]]).double().to(self.sums.device)
            self.images += 1

    def is_computable(self) -> bool:
        """Whether at least one image had OOD and in-distribution pixels."""
        return int(self.images) > 0

    def compute(self) -> dict[str, Tensor]:
        """``auroc``, ``ap``, ``fpr95`` averaged over images."""
        mean = self.sums / self.images.clamp_min(1)
        return {"auroc": mean[0], "ap": mean[1], "fpr95": mean[2]}


__all__ = ["PerImageOODMetrics"]
