"""One synthetic outlier as stored in the bank: an RGB crop (or whole frame), its soft object mask, provenance.

:class:`OutlierEntry` validates its arrays on construction (uint8 RGB, an alpha of the same size stored
as uint8 0..255, a train id or the OOD id as label value); the bytes on disk are
:mod:`~synthrel_lightning.synthesis.entry_codec`'s business.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from synthrel_lightning.labels import NUM_CLASSES, OOD_ID

__all__ = ["OutlierEntry"]


@dataclass
class OutlierEntry:
    """One synthetic outlier: an RGB crop, its soft object mask and provenance.

    ``kind="object"`` entries are crops to paste; ``kind="frame"`` entries are whole
    synthetic frames (``rgb`` the frame, ``alpha`` the object mask, ``label`` the
    frame's semantic train ids if known), used to replace a real frame.
    """

    rgb: np.ndarray
    alpha: np.ndarray
    label_value: int = OOD_ID
    name: str = ""
    prompt: str = ""
    source: str = ""
    seed: int | None = None
    model: str = ""
    created: float = field(default_factory=time.time)
    kind: Literal["object", "frame"] = "object"
    label: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rgb = np.asarray(self.rgb)
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"OutlierEntry.rgb must be uint8 (h, w, 3), got {self.rgb.dtype} {self.rgb.shape}")
        alpha = np.asarray(self.alpha)
        if alpha.shape != self.rgb.shape[:2]:
            raise ValueError(f"OutlierEntry.alpha must be (h, w) = {self.rgb.shape[:2]}, got {alpha.shape}")
        if alpha.dtype != np.uint8:
            if alpha.dtype == bool:
                alpha = alpha.astype(np.uint8) * 255
            else:
                a = alpha.astype(np.float32)
                if a.size and (np.nanmin(a) < 0.0 or np.nanmax(a) > 1.0):
                    raise ValueError("a float OutlierEntry.alpha must lie in [0, 1] (or pass uint8 0..255)")
                alpha = np.round(np.nan_to_num(a) * 255.0).astype(np.uint8)
        self.alpha = alpha
        self.label_value = int(self.label_value)
        if not (0 <= self.label_value < NUM_CLASSES or self.label_value == OOD_ID):
            raise ValueError(
                f"OutlierEntry.label_value must be a train id 0..{NUM_CLASSES - 1} or {OOD_ID} (OOD), "
                f"got {self.label_value}"
            )
        if self.kind not in ("object", "frame"):
            raise ValueError(f"OutlierEntry.kind must be 'object' or 'frame', got {self.kind!r}")
        if self.label is not None:
            self.label = np.asarray(self.label)
            if self.label.shape != self.rgb.shape[:2] or self.label.dtype != np.uint8:
                raise ValueError(
                    f"OutlierEntry.label must be uint8 {self.rgb.shape[:2]}, got {self.label.dtype} {self.label.shape}"
                )

    @property
    def is_ood(self) -> bool:
        """True for OOD objects, False for in-distribution controls (a train id)."""
        return self.label_value == OOD_ID

    def alpha_float(self) -> np.ndarray:
        """The soft mask as float32 in [0, 1]."""
        return self.alpha.astype(np.float32) * (1.0 / 255.0)

    def _meta(self) -> dict[str, Any]:
        return {
            "label_value": self.label_value,
            "name": self.name,
            "prompt": self.prompt,
            "source": self.source,
            "seed": self.seed,
            "model": self.model,
            "created": self.created,
            "kind": self.kind,
            "metadata": self.metadata,
        }
