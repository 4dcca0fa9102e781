"""The per-image OOD protocol of the synthetic-data paper (GenVal), averaged over images.

Loiseau et al., "Reliability in Semantic Segmentation: Can We Use Synthetic Data?", ECCV 2024;
their code https://github.com/valeoai/GenVal, ``ood_detection/metrics.py`` (``compute_all_metrics``)
scores each image on its own with scikit-learn, the OOD mask as the positive class and
``-conf`` (here: the OOD score, higher = more OOD) as the score:

* ``auroc``: ``auc(fpr, tpr)`` of ``roc_curve`` (which drops collinear points, ``drop_intermediate``);
* ``fpr95``: the FPR of the first ROC point (of that reduced curve) whose TPR >= 0.95;
* ``ap``: what GenVal reports as AP, its AUPR-in ``auc(recall, precision)`` of
  ``precision_recall_curve``: the TRAPEZOID area under the precision-recall points
  (plus the point recall 0, precision 1), not scikit-learn's step-wise average precision;
* ``aupr_out``: the same area with the classes swapped (in-distribution positive) and ``conf``
  (here: ``-score``) as the score.

Void pixels count as negatives (GenVal's mask has no void). The benchmark protocol
(:class:`~synthrel_lightning.metrics.PixelOODMetrics`) pools all pixels of the set and leaves void out.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from synthrel_lightning.metrics.functional import curve_counts_from_scores

GENVAL_KEYS: tuple[str, ...] = ("auroc", "ap", "aupr_out", "fpr95")


def _trapezoid_pr_area(tps: Tensor, fps: Tensor) -> Tensor:
    """``auc(recall, precision)`` of scikit-learn's precision-recall curve from counts at descending thresholds."""
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    one, zero = tps.new_ones(1), tps.new_zeros(1)
    return torch.trapezoid(torch.cat([one, precision]), torch.cat([zero, recall]))


def genval_image_metrics(scores: Tensor, positive: Tensor) -> dict[str, Tensor]:
    """GenVal's ``compute_all_metrics`` of one image: ``auroc``, ``ap`` (AUPR-in), ``aupr_out``, ``fpr95``.

    ``scores``: flat OOD scores (higher = more OOD); ``positive``: flat bool OOD mask (void
    already counted as negative). Both classes must be present. Float64 results.
    """
    scores = scores.reshape(-1)
    scores = scores if scores.dtype == torch.float64 else scores.float()
    positive = positive.reshape(-1).bool()
    tps, fps, _ = curve_counts_from_scores(scores, positive)
    # roc_curve(drop_intermediate=True): keep the ends and every point where either count bends
    if tps.numel() > 2:
        bend = (torch.diff(fps, 2) != 0) | (torch.diff(tps, 2) != 0)
        keep = torch.cat([bend.new_ones(1), bend, bend.new_ones(1)])
        roc_tps, roc_fps = tps[keep], fps[keep]
    else:
        roc_tps, roc_fps = tps, fps
    zero = tps.new_zeros(1)
    roc_tps, roc_fps = torch.cat([zero, roc_tps]), torch.cat([zero, roc_fps])
    tpr, fpr = roc_tps / roc_tps[-1], roc_fps / roc_fps[-1]
    reached = tpr >= 0.95
    out_tps, out_fps, _ = curve_counts_from_scores(-scores, ~positive)
    return {
        "auroc": torch.trapezoid(tpr, fpr),
        "ap": _trapezoid_pr_area(tps, fps),
        "aupr_out": _trapezoid_pr_area(out_tps, out_fps),
        "fpr95": fpr[int(reached.to(torch.uint8).argmax())],
    }


class PerImageOODMetrics(Metric):
    """Mean over images of GenVal's per-image ``auroc``, ``ap`` (AUPR-in), ``aupr_out``, ``fpr95``.

    Void pixels count as negatives. Images without OOD pixels (or without negatives) have
    no such metrics and are skipped. See the module docstring for the definitions.
    """

    is_differentiable = False
    full_state_update = False
    sums: Tensor
    images: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sums", default=torch.zeros(len(GENVAL_KEYS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, scores: Tensor, ood: Tensor) -> None:
        """Add images: scores (B,H,W), ood (B,H,W) 0 / 1 / 255 (255 becomes 0)."""
        if scores.shape != ood.shape:
            raise ValueError(f"PerImageOODMetrics: scores {tuple(scores.shape)} and ood {tuple(ood.shape)} differ")
        positive = (ood == 1).reshape(ood.shape[0], -1)
        n_pos = positive.sum(1).tolist()
        for s, p, k in zip(scores.reshape(scores.shape[0], -1), positive, n_pos):
            if k == 0 or k == p.numel():
                continue
            m = genval_image_metrics(s, p)
            self.sums += torch.stack([m[key] for key in GENVAL_KEYS]).double().to(self.sums.device)
            self.images += 1

    def is_computable(self) -> bool:
        """Whether at least one image had OOD and in-distribution pixels."""
        return int(self.images) > 0

    def compute(self) -> dict[str, Tensor]:
        """``auroc``, ``ap`` (GenVal's AUPR-in), ``aupr_out``, ``fpr95`` averaged over images."""
        mean = self.sums / self.images.clamp_min(1)
        return dict(zip(GENVAL_KEYS, mean))


__all__ = ["GENVAL_KEYS", "PerImageOODMetrics", "genval_image_metrics"]
