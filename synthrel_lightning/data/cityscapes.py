"""Cityscapes in its official folder layout (leftImg8bit + gtFine labelIds)."""

from __future__ import annotations

from synthrel_lightning.data.base import Frame, OnError, Sample, SegmentationDataset, Transform, void_like
from synthrel_lightning.data.io import PathLike, read_image
from synthrel_lightning.labels import LABEL_IDS, label_ids_to_train_ids, semantic_to_ood_target

__all__ = ["CityscapesDataset"]

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"
_LAYOUT = (
    "leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png"
    " + gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png"
)


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
    ) -> None:
        self.split = split
        self.labels = labels
        super().__init__(root, transform=transform, on_error=on_error, max_samples=max_samples)

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
        label = label_ids_to_train_ids(label_ids)
        return {"image": image, "label": label, "ood": semantic_to_ood_target(label), "name": frame.name}
