"""What an inpainting pass returns: the batch output, one inpainted object with its provenance, the validity check.

:class:`InpaintOutput` is the raw batch of :meth:`~synthrel_lightning.synthesis.engine.InpaintingEngine.inpaint`;
:class:`InpaintResult` one object inpainted into a frame by the paper's protocol (Loiseau et al., ECCV 2024,
arXiv 2312.09231), convertible to a bank entry; :func:`output_problem` says why an output is unusable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from synthrel_lightning.synthesis.geometry import Box

__all__ = ["InpaintOutput", "InpaintResult", "output_problem"]


class InpaintOutput(NamedTuple):
    """Inpainted images (B, 3, H, W) in [0, 1] and, per sample, whether it is valid (failed ones hold the input)."""

    images: torch.Tensor
    valid: list[bool]


@dataclass
class InpaintResult:
    """One inpainted object in a frame, with provenance.

    ``image`` is the new frame; ``patch`` the pasted ``side x side`` square; ``object_mask``
    the object's pixels in the square (bool) and ``alpha`` its feathered version; ``ok``
    is False (with ``reason``) when the inpainting failed or the object mask was rejected.
    """

    image: np.ndarray
    box: Box
    object_name: str
    label_value: int
    prompt: str
    seed: int
    model_id: str
    patch: np.ndarray
    object_mask: np.ndarray
    alpha: np.ndarray
    ok: bool = True
    reason: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def frame_mask(self) -> np.ndarray:
        """The object mask at frame size (bool)."""
        m = np.zeros(self.image.shape[:2], dtype=bool)
        m[self.box.slices] = self.object_mask
        return m

    def label_map(self, base: np.ndarray | None = None) -> np.ndarray:
        """``base`` (frame train ids; all void if None) with ``label_value`` written on the object's pixels."""
        out = (
            np.full(self.image.shape[:2], 255, np.uint8) if base is None else np.array(base, dtype=np.uint8, copy=True)
        )
        if out.shape != self.image.shape[:2]:
            raise ValueError(f"label map shape {out.shape} does not match the frame {self.image.shape[:2]}")
        out[self.frame_mask()] = self.label_value
        return out

    def to_entry(self, kind: str = "object", base_label: np.ndarray | None = None, source: str = "inpaint") -> Any:
        """An :class:`~synthrel_lightning.synthesis.bank.OutlierEntry` (the object crop, or the whole frame)."""
        from synthrel_lightning.synthesis.bank import OutlierEntry

        meta = dict(self.metadata, box=list(self.box))
        common: dict[str, Any] = dict(
            label_value=self.label_value,
            name=self.object_name,
            prompt=self.prompt,
            source=source,
            seed=self.seed,
            model=self.model_id,
            metadata=meta,
        )
        if kind == "object":
            return OutlierEntry(rgb=self.patch, alpha=self.alpha, kind="object", **common)
        if kind == "frame":
            return OutlierEntry(
                rgb=self.image, alpha=self.frame_mask(), kind="frame", label=self.label_map(base_label), **common
            )
        raise ValueError(f"entry kind must be 'object' or 'frame', got {kind!r}")


def output_problem(image: torch.Tensor, black_level: float = 1.0 / 255.0) -> str | None:
    """Why an inpainted image (3, H, W) in [0, 1] is unusable ("NaN/inf values", "all black"), or None."""
    if not torch.isfinite(image).all():
        return "NaN/inf values"
    if float(image.max()) <= black_level:
        return "all black"
    return None
