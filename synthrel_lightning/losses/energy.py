"""Energy-based outlier losses: PEBAL's energy loss, an estimated-margins extension, RPL's positive energy.

With ``E(z) = -logsumexp(z)`` over the K in-distribution logits, ``I`` the inlier pixels
(train id < K), ``O`` the OOD pixels (254); void pixels (255) are in neither.

- :class:`EnergyHinge`: Y. Tian, Y. Liu, G. Pang, F. Liu, Y. Chen, G. Carneiro, "Pixel-wise
  Energy-biased Abstention Learning for Anomaly Segmentation on Complex Urban Driving
  Scenes" (PEBAL), ECCV 2022 (github.com/tianyu0207/PEBAL, ``code/losses.py``
  ``energy_loss``); the squared hinge is W. Liu, X. Wang, J. Owens, Y. Li, "Energy-based
  Out-of-distribution Detection", NeurIPS 2020.
- :class:`EnergyHingeEstimatedMargins`: an extension of this library (not a published
  method): PEBAL's loss with margins estimated from the inlier energies during training.
- :class:`PositiveEnergy`: Y. Liu, C. Ding, Y. Tian, G. Pang, V. Belagiannis, I. Reid,
  G. Carneiro, "Residual Pattern Learning for Pixel-wise Out-of-Distribution Detection in
  Semantic Segmentation" (RPL), ICCV 2023 (github.com/yyliu01/RPL, ``loss/PositiveEnergy.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.checks import check_logits_target
from synthrel_lightning.losses.stats import PixelStats


def energy_smoothness(energy: Tensor) -> Tensor:
    """PEBAL's smoothness regulariser: half the sum of squared differences of vertical and horizontal neighbours."""
    vertical = (energy[:, 1:, :] - energy[:, :-1, :]).square().sum()
    horizontal = (energy[:, :, 1:] - energy[:, :, :-1]).square().sum()
    return (vertical + horizontal) / 2


class EnergyHinge(LossTerm):
    """PEBAL's energy loss: squared energy hinges plus sparsity and smoothness regularisers (Tian et al. 2022).

    With ``E = -logsumexp(z)``, the authors' ``energy_loss`` is::

        L = 0.5 [ mean_I relu(E - m_in)^2 + mean_O relu(m_out - E)^2 ]    (batch with OOD pixels)
          +  sparsity_weight * ||E_O||_2                                     (L2 norm over OOD pixels)
          +  smoothness_weight * Σ_{neighbours} (E_p - E_q)^2 / 2            (whole energy map, void included)

    and ``L = mean_I relu(E - m_in)^2 + smoothness`` for a batch without OOD pixels (no 0.5
    there). Defaults are theirs: ``m_in=-12, m_out=-6``, sparsity ``5e-4``, smoothness
    ``3e-6``. Their trainer adds ``0.1 * L``: set ``weight: 0.1``.

    PEBAL's network has one extra output, the abstention class of :class:`GamblerLoss`; its
    energy is taken over the K in-distribution logits only. With
    ``abstention_channel=True`` the last channel of the logits is that class and is left
    out of the energy (the term then computes its own logsumexp instead of sharing it).

    Differences from the reference code: an empty inlier set contributes 0 (their mean
    of nothing is NaN); everything else matches.
    """

    stats_needed = frozenset({"lse"})
    m_in: Tensor | float  # numbers here; buffers in EnergyHingeEstimatedMargins
    m_out: Tensor | float

    def __init__(
        self,
        weight: float = 1.0,
        m_in: float = -12.0,
        m_out: float = -6.0,
        sparsity_weight: float = 5e-4,
        smoothness_weight: float = 3e-6,
        abstention_channel: bool = False,
    ) -> None:
        super().__init__(weight)
        who = type(self).__name__
        if m_in > m_out:
            raise ValueError(f"{who}: m_in ({m_in}) must not exceed m_out ({m_out}): inliers get the lower energy")
        if sparsity_weight < 0 or smoothness_weight < 0:
            raise ValueError(
                f"{who}: sparsity_weight and smoothness_weight must be >= 0, got {sparsity_weight!r} and "
                f"{smoothness_weight!r}"
            )
        self.sparsity_weight = float(sparsity_weight)
        self.smoothness_weight = float(smoothness_weight)
        self.abstention_channel = bool(abstention_channel)
        self._init_margins(float(m_in), float(m_out))

    def _init_margins(self, m_in: float, m_out: float) -> None:
        self.m_in = m_in
        self.m_out = m_out

    def _margins(self, energy: Tensor, stats: PixelStats) -> tuple[Tensor | float, Tensor | float]:
        """The margins ``(m_in, m_out)`` used on this batch."""
        return self.m_in, self.m_out

    @property
    def supports_stats(self) -> bool:
        """Shared statistics hold the logsumexp over all channels: unusable with an abstention channel."""
        return not self.abstention_channel

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """PEBAL's energy loss on logits (B,K,H,W), or (B,K+1,H,W) with an abstention channel."""
        if self.abstention_channel:
            check_logits_target(logits, target, type(self).__name__)
            if logits.shape[1] < 2:
                raise ValueError(
                    f"{type(self).__name__}: abstention_channel=True needs K+1 >= 2 channels, got {logits.shape[1]}"
                )
            logits = logits[:, :-1]
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """PEBAL's energy loss from shared statistics."""
        energy = -stats.need("lse")
        m_in, m_out = self._margins(energy, stats)
        loss_in = stats.inlier_mean(F.relu(energy - m_in).square())
        loss_out = stats.ood_mean(F.relu(m_out - energy).square())
        loss = torch.where(stats.has_ood, 0.5 * (loss_in + loss_out), loss_in)
        if self.sparsity_weight > 0:
            # ||E_O||_2 without a host sync; its gradient at an all-zero vector is zero.
            loss = loss + self.sparsity_weight * torch.linalg.vector_norm(torch.where(stats.ood, energy, 0.0))
        if self.smoothness_weight > 0:
            loss = loss + self.smoothness_weight * energy_smoothness(energy)
        return loss


class EnergyHingeEstimatedMargins(EnergyHinge):
    """:class:`EnergyHinge` with margins estimated from the inlier energies: an extension, not a published method.

    PEBAL fixes ``m_in=-12, m_out=-6``, but good margins depend on the backbone's logit
    scale. Here, at each training-mode call, the ``in_quantile`` quantile of the batch's
    inlier energies (detached; the inliers among at most ``max_samples`` evenly strided
    pixels) is averaged over processes, weighted by their inlier-pixel counts, when
    ``torch.distributed`` is initialised; the first value sets ``m_in`` and later ones move
    it by an exponential moving average ``m_in <- momentum * m_in + (1 - momentum) * q``;
    ``m_out = m_in + margin_gap``. Updates stop after ``freeze_after`` of them (``None``:
    never). The margins live in buffers ``m_in``/``m_out`` (saved in checkpoints, no
    gradient); evaluation-mode calls use them without updating them. The constructor's
    ``m_in``/``m_out`` are the values before the first update. The loss itself is PEBAL's.
    """

    m_in: Tensor
    m_out: Tensor
    num_updates: Tensor

    def __init__(
        self,
        weight: float = 1.0,
        m_in: float = -12.0,
        m_out: float = -6.0,
        sparsity_weight: float = 5e-4,
        smoothness_weight: float = 3e-6,
        abstention_channel: bool = False,
        in_quantile: float = 0.9,
        margin_gap: float = 6.0,
        momentum: float = 0.9,
        freeze_after: int | None = None,
        max_samples: int = 65536,
    ) -> None:
        who = type(self).__name__
        if not 0.0 <= in_quantile <= 1.0:
            raise ValueError(f"{who}: in_quantile must be in [0, 1], got {in_quantile!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"{who}: momentum must be in [0, 1), got {momentum!r}")
        if margin_gap < 0:
            raise ValueError(f"{who}: margin_gap must be >= 0, got {margin_gap!r}")
        if max_samples < 1:
            raise ValueError(f"{who}: max_samples must be >= 1, got {max_samples!r}")
        if freeze_after is not None and freeze_after < 0:
            raise ValueError(f"{who}: freeze_after must be >= 0 or None, got {freeze_after!r}")
        super().__init__(weight, m_in, m_out, sparsity_weight, smoothness_weight, abstention_channel)
        self.in_quantile = float(in_quantile)
        self.margin_gap = float(margin_gap)
        self.momentum = float(momentum)
        self.freeze_after = freeze_after
        self.max_samples = int(max_samples)

    @property
    def name(self) -> str:
        """Name used in logged keys (``train/loss_energy_hinge_estimated_margins``) and ``loss_weights``."""
        return "energy_hinge_estimated_margins"

    def _init_margins(self, m_in: float, m_out: float) -> None:
        self.register_buffer("m_in", torch.tensor(m_in))
        self.register_buffer("m_out", torch.tensor(m_out))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def _margins(self, energy: Tensor, stats: PixelStats) -> tuple[Tensor, Tensor]:
        if self.training:
            self._update_margins(energy, stats.inlier, stats.valid)
        return self.m_in.to(energy.dtype), self.m_out.to(energy.dtype)

    @torch.no_grad()
    def _update_margins(self, energy: Tensor, inlier: Tensor, valid: Tensor | None = None) -> None:
        # Written without host syncs (no .item(), no boolean indexing): it runs every step.
        flat = torch.where(inlier, energy.detach(), torch.full_like(energy.detach(), float("nan"))).reshape(-1).float()
        # Evenly strided picks rather than random ones: no draw from a generator the run relies on.
        stride = max(1, -(-flat.numel() // self.max_samples))
        q = torch.nanquantile(flat[::stride], self.in_quantile)
        n = inlier.sum().double()
        sums = torch.stack([torch.where(n > 0, q.double() * n, n.new_zeros(())), n])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every process reaches this call once per training step, with or without inliers.
            torch.distributed.all_reduce(sums)
        q_all = (sums[0] / sums[1].clamp_min(1)).to(self.m_in.dtype)
        first = self.num_updates == 0
        new = torch.where(first, q_all, self.momentum * self.m_in + (1.0 - self.momentum) * q_all)
        update = sums[1] > 0
        if valid is not None:  # a target that fails its (deferred) check must not move the margins
            update = update & valid
        if self.freeze_after is not None:
            update = update & (self.num_updates < self.freeze_after)
        self.m_in.copy_(torch.where(update, new, self.m_in))
        self.m_out.copy_(torch.where(update, self.m_in + self.margin_gap, self.m_out))
        self.num_updates.add_(update.long())


class PositiveEnergy(LossTerm):
    """RPL's outlier loss ``energy_part``: ``L = mean_O relu(logsumexp(z))`` (Liu et al., ICCV 2023).

    It pushes the OOD pixels' energy ``-logsumexp(z)`` above 0. The authors weight it by
    0.05 (``energy_weight``) and apply it to the logits of the network with its residual
    pattern-learning block; their inlier terms (cross-entropy to the frozen network's
    predictions and an entropy-matching regulariser) need that frozen network's logits and
    are not part of this term. A batch without OOD pixels gives an exact zero.
    """

    stats_needed = frozenset({"lse"})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean positive part of the negative energy over OOD pixels."""
        return self._via_stats(logits, target)

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """Mean positive part of the negative energy over OOD pixels, from shared statistics."""
        return stats.ood_mean(F.relu(stats.need("lse")))


__all__ = ["EnergyHinge", "EnergyHingeEstimatedMargins", "PositiveEnergy", "energy_smoothness"]
