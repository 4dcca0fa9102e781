"""The interface every training-loss term implements."""

from __future__ import annotations

import re
from typing import ClassVar

from torch import Tensor, nn

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

    A term with :attr:`requires_mask_classification` instead takes the per-pixel class
    scores of a mask-classification model, ``l_k = Σ_q softmax(c_q)[k] σ(m_q)`` (B,K,h,w) at
    the mask resolution, as its first argument (see
    :func:`~synthrel_lightning.losses.objective.evaluate_terms`); a segmenter with per-pixel
    logits only cannot train it.
    """

    #: Pixel statistics :meth:`forward_stats` reads; empty for terms without that method.
    stats_needed: ClassVar[frozenset[str]] = frozenset()
    #: Whether the term reads mask-classification class scores instead of per-pixel logits.
    requires_mask_classification: ClassVar[bool] = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if not (weight >= 0.0):
            raise ValueError(f"{type(self).__name__}: weight must be >= 0, got {weight!r}")
        self.weight = float(weight)

    @property
    def name(self) -> str:
        """Snake-case name used in logged keys (``train/loss_<name>``) and ``loss_weights``."""
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
        return self.forward_stats(PixelStats(logits, target, self.stats_needed, who=type(self).__name__))


__all__ = ["LossTerm"]
