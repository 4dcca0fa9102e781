"""The OOD score names a configuration may give, and the error for a name that is none of them."""

from __future__ import annotations

from typing import Literal, get_args

ScoreName = Literal[
    "msp", "max_logit", "entropy", "energy", "sigmoid_sum", "rba", "mask2anomaly", "standardized_max_logit"
]
"""Names accepted by :func:`~synthrel_lightning.scores.registry.build_scorer` and ``OODSegmenter(ood_score=...)``."""

SCORE_NAMES: tuple[str, ...] = get_args(ScoreName)
"""Every score name."""


def unknown_score(name: object, who: str = "OOD score") -> ValueError:
    """The error for a name that is no score, listing the valid ones."""
    return ValueError(f"{who}: unknown OOD score {name!r}; valid names: {', '.join(SCORE_NAMES)}")


__all__ = ["SCORE_NAMES", "ScoreName", "unknown_score"]
