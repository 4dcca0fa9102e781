"""OOD scores by name: the score map of a stateless score, and the scorer module each name builds."""

from __future__ import annotations

from torch import Tensor

from synthrel_lightning.scores.names import SCORE_NAMES, ScoreName, unknown_score
from synthrel_lightning.scores.pixel import STATELESS, OODScorer, stateless_score
from synthrel_lightning.scores.protocol import OODScore

STATELESS_SCORE_NAMES: tuple[str, ...] = tuple(n for n in SCORE_NAMES if n in STATELESS)
"""Scores that need nothing but the class scores (all but ``standardized_max_logit``)."""


def ood_score(name: str, logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Score map ``(B, H, W)`` (higher = more OOD) of a stateless score on class scores ``(B, K, H, W)``.

    The inputs are divided by ``temperature`` first; ``energy`` is then multiplied by it
    (``-T logsumexp(z / T)``), which leaves its ranking unchanged.
    """
    if name not in SCORE_NAMES:
        raise unknown_score(name)
    if name not in STATELESS:
        raise ValueError(
            f"OOD score {name!r} needs statistics of the model on training data: use build_scorer({name!r}, "
            "num_classes=K) and fill its statistics (see StandardizedMaxLogit)"
        )
    return stateless_score(name, logits, temperature)


def build_scorer(name: str, temperature: float = 1.0, num_classes: int = 19) -> OODScore:
    """Scorer module for ``name``; ``temperature`` applies to stateless scores, ``num_classes`` to SML."""
    if name not in SCORE_NAMES:
        raise unknown_score(name)
    if name == "standardized_max_logit":
        from synthrel_lightning.scores.sml import StandardizedMaxLogit

        return StandardizedMaxLogit(num_classes=num_classes)
    return OODScorer(name, temperature=temperature)


__all__ = ["SCORE_NAMES", "STATELESS_SCORE_NAMES", "ScoreName", "build_scorer", "ood_score", "unknown_score"]
