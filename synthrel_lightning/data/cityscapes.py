"""Cityscapes in its official folder layout (leftImg8bit + gtFine labelIds)."""

from __future__ import annotations

import cv2
import numpy as np

from synthrel_lightning.data.base import Frame, OnError, Sample, SegmentationDataset, Transform, void_like
from synthrel_lightning.data.io import PathLike, read_image
from synthrel_lightning.labels import LABEL_IDS, LABEL_TO_TRAIN_ID, OOD_ID, OOD_NEGATIVE, OOD_POSITIVE, VOID_ID
from synthrel_lightning.qc.thresholds import QCFilter

__all__ = ["CityscapesDataset"]

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"
_LAYOUT = (
    "leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png"
    " + gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png"
)

# Lookup tables over all 256 uint8 values, applied with cv2.LUT (one pass, ~3x faster than fancy indexing).
_TRAIN_LUT = np.ascontiguousarray(LABEL_TO_TRAIN_ID, dtype=np.uint8)
_OOD_LUT = np.full(256, OOD_NEGATIVE, np.uint8)
_OOD_LUT[VOID_ID], _OOD_LUT[OOD_ID] = VOID_ID, OOD_POSITIVE


def label_ids_to_targets(label_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train ids (0..18, void 255) and the OOD target (0 in, 255 void) of a uint8 (H, W) label-id map."""
    label = cv2.LUT(np.ascontiguousarray(label_ids, dtype=np.uint8), _TRAIN_LUT)
    return label, cv2.LUT(label, _OOD_LUT)


class CityscapesDataset(SegmentationDataset):
    """Cityscapes frames with train-id labels converted from the official ``*_gtFine_labelIds.png``.

    ``ood`` is 0 on every labelled pixel and 255 on void (Cityscapes holds no OOD objects).
    With ``labels=False`` (e.g. the ``test`` split, whose labels are withheld) no label
    file is read and ``label``/``ood`` are all 255.
    """

    has_semantics = True
    has_ood = False

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        transform: Transform | None = None,
        on_error: OnError = "raise",
        max_samples: int | None = None,
        labels: bool = True,
        qc_filter: QCFilter | str | None = None,
    ) -> None:
        self.split = split
        self.labels = labels
        super().__init__(root, transform=transform, on_error=on_error, max_samples=max_samples, qc_filter=qc_filter)

    def _index(self) -> list[Frame]:
        layout = _LAYOUT.replace("{split}", self.split)
        self._require_dir(f"leftImg8bit/{self.split}", layout)
        if self.labels:
            self._require_dir(f"gtFine/{self.split}", layout)
        images = self._glob(f"leftImg8bit/{self.split}/*/*{_IMAGE_SUFFIX}", layout)
        candidates = []
        for image in images:
            stem = image.name[: -len(_IMAGE_SUFFIX)]
            label = self.root / "gtFine" / self.split / image.parent.name / f"{stem}{_LABEL_SUFFIX}"
            candidates.append(Frame(stem, image, label if self.labels else None))
        return self._pair(candidates)

    def _load(self, frame: Frame) -> Sample:
        if frame.label is None:
            image = read_image(frame.image)
            return {"image": image, "label": void_like(image), "ood": void_like(image), "name": frame.name}
        image, label_ids = self._read_checked(frame, LABEL_IDS, "Cityscapes label ids")
        label, ood = label_ids_to_targets(label_ids)
        return {"image": image, "label": label, "ood": ood, "name": frame.name}
