"""Outlier exposure by uniform targets: Hendrycks et al.'s OE and Meta-OoD's pixel-pooled soft-target loss.

Notation: ``z`` are the per-pixel logits over the K in-distribution classes, ``I`` the
inlier pixels (train id < K), ``O`` the OOD pixels (254); void pixels (255) take part in
no term.

- :class:`UniformOutlierExposure`: D. Hendrycks, M. Mazeika, T. Dietterich, "Deep Anomaly
  Detection with Outlier Exposure", ICLR 2019 (github.com/hendrycks/outlier-exposure):
  ``mean_O(-(1/K) Σ_k log softmax(z)_k)``, weight 0.5 beside cross-entropy.
- :class:`MetaOoD`: R. Chan, M. Rottmann, H. Gottschalk, "Entropy Maximization and Meta
  Classification for Out-of-Distribution Detection in Semantic Segmentation", ICCV 2021
  (github.com/robin-chan/meta-ood, ``ood_training.py``): one soft-target cross-entropy
  averaged over every (pixel, class) entry of the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.stats import PixelStats


class UniformOutlierExposure(LossTerm):
    """Hendrycks et al.'s outlier exposure: cross-entropy to the uniform distribution on OOD pixels.

    ``L = mean_O( -(1/K) Σ_k log softmax(z)_k )``, computed as ``logsumexp(z) - mean_k z_k``;
    its minimum, ``log K``, is reached by a uniform prediction. The authors add it with
    weight 0.5 to the in-distribution cross-entropy, both averaged over their own samples::

        losses:
          - class_path: synthrel_lightning.losses.CrossEntropy
          - {class_path: synthrel_lightning.losses.UniformOutlierExposure, init_args: {weight: 0.5}}

    A batch without OOD pixels gives an exact zero that keeps the graph. For Meta-OoD's
    λ-weighted objective, which pools all pixels, use :class:`MetaOoD`.
    """

    stats_needed = frozenset({"lse", "mean"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean uniform-target cross-entropy over OOD pixels."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """Mean uniform-target cross-entropy over OOD pixels, from shared statistics."""
        return stats.ood_mean(stats.need("lse") - stats.need("mean"))


class MetaOoD(LossTerm):
    """Meta-OoD's entropy-maximisation loss (Chan et al., ICCV 2021), pixel-pooled as in the authors' code.

    The authors' ``encode_target`` gives each pixel a soft target: ``1-λ`` on the label of an
    inlier, ``λ/K`` on every class of an OOD pixel, zeros on void; their ``cross_entropy``
    then takes the mean of ``target * (-log_softmax(z))`` over all ``B*K*H*W`` entries:

    ``L = [ (1-λ) Σ_I (-log softmax(z)_y) + λ Σ_O (-(1/K) Σ_k log softmax(z)_k) ] / (N K)``

    with ``N = B*H*W`` every pixel of the batch (void included) and ``λ = 0.9``
    (``pareto_alpha`` in their configuration). The term replaces :class:`CrossEntropy`:
    it holds both the in-distribution and the OOD part. Because both sums are divided by
    the same ``N K``, the OOD part's share grows with the fraction of OOD pixels; writing
    it as two per-group means (:class:`CrossEntropy` + :class:`UniformOutlierExposure`)
    would weight the OOD part by ``|I|/|O|`` more, so λ would not mean the same.
    """

    def __init__(self, weight: float = 1.0, lam: float = 0.9) -> None:
        super().__init__(weight)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"MetaOoD: lam must be in [0, 1], got {lam!r}")
        self.lam = float(lam)

    @property
    def name(self) -> str:
        """Name used in logged keys (``train/loss_meta_ood``) and ``loss_weights``."""
        return "meta_ood"

    stats_needed = frozenset({"lse", "mean", "target_logit"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Soft-target cross-entropy averaged over every (pixel, class) entry."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """Soft-target cross-entropy averaged over every (pixel, class) entry, from shared statistics."""
        lse = stats.need("lse")
        inlier_ce = (1.0 - self.lam) * (lse - stats.need("target_logit"))
        uniform_ce = self.lam * (lse - stats.need("mean"))
        per_pixel = torch.where(stats.inlier, inlier_ce, torch.where(stats.ood, uniform_ce, 0.0))
        return per_pixel.sum() / (stats.target.numel() * stats.num_classes)


__all__ = ["MetaOoD", "UniformOutlierExposure"]
