"""The result of one evaluation step: what callbacks and tools read instead of re-running the model.

A carrier type on the base floor, below the models that return it and the callbacks and studies
that read it (``synthrel_lightning.models`` re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class EvaluationResult:
    """One evaluation batch of one named set, as returned by ``validation_step`` / ``test_step``."""

    stage: str  # "val" | "test"
    set_name: str  # the evaluation set's name
    batch_idx: int
    dataloader_idx: int
    images: Tensor  # (B,3,H,W) the input batch
    logits: Tensor  # (B,K,H,W) temperature-scaled per-pixel class scores at label size, detached
    score: Tensor  # (B,H,W) OOD score, higher = more OOD, detached
    label: Tensor | None  # (B,H,W) train ids, 255 void
    ood: Tensor | None  # (B,H,W) 0 in-distribution / 1 OOD / 255 void
    names: list[str] | None  # frame names


__all__ = ["EvaluationResult"]
