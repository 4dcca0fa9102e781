"""A list of loss terms evaluated on one batch, sharing one set of pixel statistics."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.stats import PixelStats


def evaluate_terms(
    terms: Sequence[LossTerm],
    logits: Tensor,
    target: Tensor,
    who: str = "loss",
    fused: bool = True,
    class_scores: Tensor | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Unweighted values of ``terms`` on one batch, sharing one :class:`PixelStats`.

    Terms without :meth:`~LossTerm.forward_stats` are called as ``term(logits, target)``;
    terms with :attr:`~LossTerm.requires_mask_classification` as
    ``term(class_scores, target)``, where ``class_scores`` are the mask-classification
    model's per-pixel class scores (B,K,h,w) at the mask resolution. A term applied to
    the auxiliary decoder layers as well (RbA, Mask2Anomaly) is called once per layer by
    the caller.

    The target's values are not checked here: the second result is a 0-d boolean tensor,
    True when they are valid; the caller checks it (one host sync) once everything is
    queued, and calls :func:`check_target_values` for the error if it is False.
    """
    needing_scores = [type(t).__name__ for t in terms if t.requires_mask_classification]
    if needing_scores and class_scores is None:
        raise ValueError(
            f"{who}: loss terms {needing_scores} need the per-pixel class scores of a mask-classification "
            "model (class_scores), which were not given; use them with a mask-classification segmenter"
        )
    needs = frozenset().union(*(t.stats_needed for t in terms if t.supports_stats))
    stats = PixelStats(logits, target, needs, who=who, validate=False, fused=fused)
    values = []
    for term in terms:
        if term.requires_mask_classification:
            values.append(term(class_scores, target))
        elif term.supports_stats:
            values.append(term.forward_stats(stats))
        else:
            values.append(term(logits, target))
    assert stats.valid is not None
    return values, stats.valid


def check_target_values(logits: Tensor, target: Tensor, who: str) -> None:
    """Raise a clear error unless ``target`` fits ``logits`` and holds only 0..K-1, 254 and 255."""
    PixelStats(logits, target, needs=(), who=who, validate=True)


__all__ = ["check_target_values", "evaluate_terms"]
