"""The protocol of OOD scores: stateless scores and scores that need statistics of the model."""

from __future__ import annotations

from typing import ClassVar, Literal

from torch import Tensor, nn

OutputKind = Literal["per_pixel", "mask_classification"]
"""What a segmenter's per-pixel class scores are: per-pixel logits, or the per-pixel class scores
``l_k = Σ_q softmax(c_q)[k] σ(m_q)`` of a mask-classification model (Mask2Former, OneFormer)."""


class OODScore(nn.Module):
    """A score module: ``forward(class_scores (B,K,H,W)) -> (B,H,W)``, higher = more OOD.

    ``requires`` names the output kind the score is defined on (``None``: any kind).
    ``uses_temperature``: the score reads temperature-scaled inputs (``False``: the raw ones,
    as the method's authors defined it; its value is then independent of a fitted temperature).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[OutputKind | None] = None
    uses_temperature: ClassVar[bool] = True

    def check_output_kind(self, kind: OutputKind, who: str = "OODSegmenter") -> None:
        """Raise a clear error when the score is not defined on ``kind`` outputs."""
        if self.requires is not None and kind != self.requires:
            raise ValueError(
                f"{who}: OOD score {self.name!r} is defined on {self.requires.replace('_', '-')} outputs, but the "
                f"segmenter outputs {kind.replace('_', '-')} scores"
                + (
                    "; for per-pixel logits use 'sigmoid_sum' (the same form on logits, an extension) or "
                    "'energy'/'max_logit'"
                    if self.requires == "mask_classification"
                    else ""
                )
            )


class StatefulScore(OODScore):
    """An OOD score that needs statistics of the model on training data before it can score.

    The statistics are buffers (they travel in checkpoints); the life cycle is
    :meth:`reset_statistics` -> :meth:`update_statistics` per batch -> :meth:`finalize`,
    after which :attr:`is_ready` is true.
    """

    uses_temperature = False

    def reset_statistics(self) -> None:  # pragma: no cover - interface
        """Forget all statistics."""
        raise NotImplementedError

    def update_statistics(self, class_scores: Tensor, target: Tensor | None = None) -> None:  # pragma: no cover
        """Accumulate the statistics of one batch of raw class scores (and its train-id target)."""
        raise NotImplementedError

    def finalize(self) -> None:  # pragma: no cover - interface
        """Turn the accumulated sums into the statistics used by ``forward``."""
        raise NotImplementedError

    @property
    def is_ready(self) -> bool:  # pragma: no cover - interface
        """Whether the statistics are available (finalised or loaded)."""
        raise NotImplementedError


__all__ = ["OODScore", "OutputKind", "StatefulScore"]
