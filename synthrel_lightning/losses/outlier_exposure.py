"""Outlier-exposure loss terms: they teach a segmenter to flag pixels labelled OOD (254).

Notation: ``z`` are the per-pixel logits over the K in-distribution classes, ``I`` the
inlier pixels (train id < K), ``O`` the OOD pixels (254); void pixels (255) take part in
no term. Every term returns the *unweighted* value; a term that only looks at OOD pixels
returns an exact zero (still attached to the graph) for a batch without OOD pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.cross_entropy import CrossEntropy
from synthrel_lightning.losses.stats import PixelStats


class UniformOutlierExposure(LossTerm):
    """Cross-entropy to the uniform distribution on OOD pixels (Hendrycks' OE, Meta-OoD).

    ``L = mean_O( -(1/K) Σ_k log softmax(z)_k )``, computed as ``logsumexp(z) - mean_k z_k``;
    its minimum, ``log K``, is reached by a uniform prediction.

    Meta-OoD's objective ``(1-λ) CE_I + λ L`` is this term with ``weight=λ`` beside
    :class:`CrossEntropy` with ``weight=1-λ`` (see :func:`meta_ood_losses`), e.g. in YAML::

        losses:
          - {class_path: synthrel_lightning.losses.CrossEntropy, init_args: {weight: 0.1}}
          - {class_path: synthrel_lightning.losses.UniformOutlierExposure, init_args: {weight: 0.9}}
    """

    stats_needed = frozenset({"lse", "mean"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean uniform-target cross-entropy over OOD pixels."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """Mean uniform-target cross-entropy over OOD pixels, from shared statistics."""
        return stats.ood_mean(stats.need("lse") - stats.need("mean"))


def meta_ood_losses(lam: float = 0.9, class_weights: list[float] | None = None) -> list[LossTerm]:
    """Meta-OoD's objective ``(1-λ) CE_I + λ OE_O`` as two weighted loss terms."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"meta_ood_losses: lam must be in [0, 1], got {lam!r}")
    return [CrossEntropy(weight=1.0 - lam, class_weights=class_weights), UniformOutlierExposure(weight=lam)]


class EnergyHinge(LossTerm):
    """Squared-hinge energy loss (Liu et al. 2020, PEBAL): low energy on inliers, high on OOD.

    With ``E(z) = -logsumexp(z)``:
    ``L = mean_I relu(E - m_in)^2 + mean_O relu(m_out - E)^2`` (each mean over its own
    pixels, an empty set contributing 0). PEBAL uses ``m_in=-12, m_out=-6`` with weight 0.1.

    Margins depend on the backbone's logit scale. With ``estimate_margins=True`` they are
    estimated from the inlier energies instead, by this rule: at each training-mode call
    the ``in_quantile`` quantile of the batch's inlier energies (detached; the inliers
    among at most ``max_samples`` evenly strided pixels) is averaged over processes, weighted by their
    inlier-pixel counts, when ``torch.distributed`` is initialised; the first value sets
    ``m_in`` and later ones move it by an exponential moving average
    ``m_in <- momentum * m_in + (1 - momentum) * q``; ``m_out = m_in + margin_gap``.
    Updates stop after ``freeze_after`` of them (``None``: never). The margins live in
    buffers ``m_in``/``m_out`` (saved in checkpoints, no gradient); evaluation-mode calls
    use them without updating them. The constructor's ``m_in``/``m_out`` are the values
    before the first update.
    """

    def __init__(
        self,
        weight: float = 1.0,
        m_in: float = -12.0,
        m_out: float = -6.0,
        estimate_margins: bool = False,
        in_quantile: float = 0.9,
        margin_gap: float = 6.0,
        momentum: float = 0.9,
        freeze_after: int | None = None,
        max_samples: int = 65536,
    ) -> None:
        super().__init__(weight)
        if m_in > m_out:
            raise ValueError(
                f"EnergyHinge: m_in ({m_in}) must not exceed m_out ({m_out}): inliers get the lower energy"
            )
        if not 0.0 <= in_quantile <= 1.0:
            raise ValueError(f"EnergyHinge: in_quantile must be in [0, 1], got {in_quantile!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EnergyHinge: momentum must be in [0, 1), got {momentum!r}")
        if margin_gap < 0:
            raise ValueError(f"EnergyHinge: margin_gap must be >= 0, got {margin_gap!r}")
        if max_samples < 1:
            raise ValueError(f"EnergyHinge: max_samples must be >= 1, got {max_samples!r}")
        self.estimate_margins = bool(estimate_margins)
        self.in_quantile = float(in_quantile)
        self.margin_gap = float(margin_gap)
        self.momentum = float(momentum)
        self.freeze_after = freeze_after
        self.max_samples = int(max_samples)
        self.register_buffer("m_in", torch.tensor(float(m_in)))
        self.register_buffer("m_out", torch.tensor(float(m_out)))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    stats_needed = frozenset({"lse"})

    @torch.no_grad()
    def _update_margins(self, energy: Tensor, inlier: Tensor, valid: Tensor | None = None) -> None:
        # Written without host syncs (no .item(), no boolean indexing): it runs every step.
        flat = torch.where(inlier, energy.detach(), torch.full_like(energy.detach(), float("nan"))).reshape(-1).float()
        # Evenly strided picks rather than random ones: no draw from a generator the run relies on.
        stride = max(1, -(-flat.numel() // self.max_samples))
        q = torch.nanquantile(flat[::stride], self.in_quantile)
        n = inlier.sum().double()
        stats = torch.stack([torch.where(n > 0, q.double() * n, n.new_zeros(())), n])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every process reaches this call once per training step, with or without inliers.
            torch.distributed.all_reduce(stats)
        q_all = (stats[0] / stats[1].clamp_min(1)).to(self.m_in.dtype)
        first = self.num_updates == 0
        new = torch.where(first, q_all, self.momentum * self.m_in + (1.0 - self.momentum) * q_all)
        update = stats[1] > 0
        if valid is not None:  # a target that fails its (deferred) check must not move the margins
            update = update & valid
        if self.freeze_after is not None:
            update = update & (self.num_updates < self.freeze_after)
        self.m_in.copy_(torch.where(update, new, self.m_in))
        self.m_out.copy_(torch.where(update, self.m_in + self.margin_gap, self.m_out))
        self.num_updates.add_(update.long())

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Squared hinges on inlier and OOD energies."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """Squared hinges on inlier and OOD energies, from shared statistics."""
        energy = -stats.need("lse")
        if self.estimate_margins and self.training:
            self._update_margins(energy, stats.inlier, stats.valid)
        m_in = self.m_in.to(energy.dtype)
        m_out = self.m_out.to(energy.dtype)
        loss_in = stats.inlier_mean(F.relu(energy - m_in).square())
        loss_out = stats.ood_mean(F.relu(m_out - energy).square())
        return loss_in + loss_out


class RbARejection(LossTerm):
    """RbA-style outlier loss: every class rejects OOD pixels (Nayal et al. 2023).

    With the class-score sum ``S(z) = Σ_k sigmoid(z_k)`` (RbA's OOD score is ``-S``):
    ``L = mean_O f(S - ood_margin) + inlier_weight * mean_I f(inlier_margin - S)``,
    where ``f`` is ``softplus`` (``mode="softplus"``, smooth, keeps pushing S down) or
    ``relu`` (``mode="hinge"``, zero once S is below the margin). The optional inlier part
    keeps at least ``inlier_margin`` (default 1: one class accepts the pixel) of class score
    on inliers.
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
            raise ValueError(f"RbARejection: mode must be 'softplus' or 'hinge', got {mode!r}")
        if inlier_weight < 0:
            raise ValueError(f"RbARejection: inlier_weight must be >= 0, got {inlier_weight!r}")
        self.mode = mode
        self.ood_margin = float(ood_margin)
        self.inlier_weight = float(inlier_weight)
        self.inlier_margin = float(inlier_margin)

    @property
    def name(self) -> str:
        """Name used in logged keys (``train/loss_rba_rejection``)."""
        return "rba_rejection"

    def _f(self, x: Tensor) -> Tensor:
        return F.softplus(x) if self.mode == "softplus" else F.relu(x)

    stats_needed = frozenset({"sigmoid_sum"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Penalty on OOD pixels' summed class scores (and optionally inliers' lack of them)."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """The RbA penalty from shared statistics."""
        s = stats.need("sigmoid_sum")
        loss = stats.ood_mean(self._f(s - self.ood_margin))
        if self.inlier_weight > 0:
            loss = loss + self.inlier_weight * stats.inlier_mean(self._f(self.inlier_margin - s))
        return loss


class MaxScoreMargin(LossTerm):
    """Mask2Anomaly-style contrastive margin loss on the negative max class score.

    With the max class score ``p(z) = max_k softmax(z)_k`` and the anomaly score
    ``a = -p``, distances are taken from full confidence: ``d = a - (-1) = 1 - p`` in
    ``[0, 1 - 1/K]``. Then
    ``L = inlier_weight * mean_I d^2 + mean_O relu(margin - d)^2``:
    inliers are pulled to full confidence, OOD pixels pushed at least ``margin`` away from
    it (with ``margin=1`` OOD confidence is driven as low as it goes, towards ``1/K``).
    """

    def __init__(self, weight: float = 1.0, margin: float = 1.0, inlier_weight: float = 1.0) -> None:
        super().__init__(weight)
        if margin <= 0:
            raise ValueError(f"MaxScoreMargin: margin must be > 0, got {margin!r}")
        if inlier_weight < 0:
            raise ValueError(f"MaxScoreMargin: inlier_weight must be >= 0, got {inlier_weight!r}")
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


class PositiveEnergy(LossTerm):
    """RPL's positive-energy loss: ``L = mean_O relu(logsumexp(z))`` (OOD energy pushed above 0)."""

    stats_needed = frozenset({"lse"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean positive part of the negative energy over OOD pixels."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """Mean positive part of the negative energy over OOD pixels, from shared statistics."""
        return stats.ood_mean(F.relu(stats.need("lse")))
