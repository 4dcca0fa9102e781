"""The interface every training-loss term implements."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from synthrel_lightning.losses.stats import PixelStats


class LossTerm(nn.Module):
    """One weighted term of the training objective.

    ``forward(logits, target)`` takes logits ``(B, K, H, W)`` at the label's
    resolution and a semantic target ``(B, H, W)`` (train ids, 254 = OOD,
    255 = void) and returns the *unweighted* scalar loss; the segmenter module
    multiplies it by :attr:`weight` and logs it under :attr:`name`.

    A term that is a function of per-pixel class reductions names them in
    :attr:`stats_needed` and implements :meth:`forward_stats`; the segmenter then computes
    those statistics once for all terms of a step (see
    :class:`~synthrel_lightning.losses.stats.PixelStats`).
    """

    #: Pixel statistics :meth:`forward_stats` reads; empty for terms without that method.
    stats_needed: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if not (weight >= 0.0):
            raise ValueError(f"{type(self).__name__}: weight must be >= 0, got {weight!r}")
        self.weight = float(weight)

    @property
    def name(self) -> str:
        """Snake-case name used in logged keys (``train/loss_<name>``)."""
        base = type(self).__name__.removesuffix("Loss").removesuffix("Term")
        return re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def supports_stats(self) -> bool:
        """Whether the term can be computed from shared :class:`PixelStats` (:meth:`forward_stats`)."""
        return type(self).forward_stats is not LossTerm.forward_stats

    def forward_stats(self, stats: PixelStats) -> Tensor:
        """The unweighted loss from shared per-pixel statistics (same value as :meth:`forward`)."""
        raise NotImplementedError(f"{type(self).__name__} has no forward_stats; call it with (logits, target)")

    def _via_stats(self, logits: Tensor, target: Tensor) -> Tensor:
        """``forward`` of a stats-based term used on its own."""
        from synthrel_lightning.losses.stats import PixelStats

        return self.forward_stats(PixelStats(logits, target, self.stats_needed, who=type(self).__name__))


def check_logits_target(logits: Tensor, target: Tensor, who: str) -> None:
    """Raise a clear error unless ``logits`` is (B,K,H,W) and ``target`` is (B,H,W) integer."""
    if logits.ndim != 4:
        raise ValueError(f"{who}: logits must be (B, K, H, W), got shape {tuple(logits.shape)}")
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"{who}: target shape {tuple(target.shape)} does not match logits "
            f"{tuple(logits.shape)}; expected (B, H, W) = {(logits.shape[0], *logits.shape[2:])}"
        )
    if target.dtype.is_floating_point:
        raise TypeError(f"{who}: target must be an integer tensor of train ids, got {target.dtype}")


def finite_mean(values: Tensor, logits: Tensor) -> Tensor:
    """Mean of ``values``, or a zero that keeps the graph when ``values`` is empty."""
    if values.numel() == 0:
        return logits.sum() * 0.0
    return values.mean()


__all__ = ["LossTerm", "check_logits_target", "finite_mean", "torch"]
