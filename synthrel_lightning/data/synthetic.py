"""Synthetic evaluation frames written by ``generate`` (``eval_dir``): frames with inpainted OOD objects."""

from __future__ import annotations

import numpy as np

from synthrel_lightning.data.base import (
    Frame,
    OnError,
    Sample,
    SegmentationDataset,
    Transform,
)
from synthrel_lightning.data.io import (
    DatasetError,
    PathLike,
    check_label_values,
    check_same_size,
    read_label,
)
from synthrel_lightning.labels import (
    NUM_CLASSES,
    OOD_ID,
    VOID_ID,
    semantic_to_ood_target,
)
from synthrel_lightning.qc.thresholds import QCFilter

__all__ = ["SyntheticFramesDataset"]

_LABEL_SUFFIX = "_labelTrainIds.png"
_OOD_SUFFIX = "_ood.png"
_LAYOUT = (
    "images/<key>.png + labels/<key>_labelTrainIds.png (train ids 0..18, OOD 254, void 255) [+ labels/<key>_ood.png]"
)
_ALLOWED = frozenset(range(NUM_CLASSES)) | {OOD_ID, VOID_ID}


class SyntheticFramesDataset(SegmentationDataset):
    """Frames with inpainted objects from ``generate --write frame|both --eval_dir <root>``.

    ``label`` is read from ``labels/<key>_labelTrainIds.png`` (254 marks the inpainted OOD
    objects, in-distribution controls keep their train id); ``ood`` is derived from it
    (0 in, 1 OOD, 255 void). With ``verify_ood`` the stored ``labels/<key>_ood.png`` (when
    present) must agree with that derivation, which catches label files from different runs.
    """

    has_semantics = True
    has_ood = True

    def __init__(
        self,
        root: PathLike,
        transform: Transform | None = None,
        on_error: OnError = "raise",
        max_samples: int | None = None,
        verify_ood: bool = True,
        qc_filter: QCFilter | str | None = None,
    ) -> None:
        self.verify_ood = bool(verify_ood)
        super().__init__(root, transform=transform, on_error=on_error, max_samples=max_samples, qc_filter=qc_filter)

    def _index(self) -> list[Frame]:
        self._require_dir("images", _LAYOUT)
        self._require_dir("labels", _LAYOUT)
        images = self._glob("images/*.png", _LAYOUT)
        candidates = []
        for image in images:
            key = image.stem
            ood = self.root / "labels" / f"{key}{_OOD_SUFFIX}"
            extras = {"ood": ood} if self.verify_ood and ood.is_file() else {}
            candidates.append(Frame(key, image, self.root / "labels" / f"{key}{_LABEL_SUFFIX}", extras))
        return self._pair(candidates)

    def _load(self, frame: Frame) -> Sample:
        image, label = self._read_checked(frame, _ALLOWED, "train ids (expected 0..18, OOD 254, void 255)")
        ood = semantic_to_ood_target(label)
        stored_path = frame.extras.get("ood")
        if stored_path is not None:
            stored = read_label(stored_path)
            check_same_size(image, stored, frame.image, stored_path)
            check_label_values(stored, (0, 1, VOID_ID), stored_path, "OOD target values")
            if not np.array_equal(stored, ood):
                n = int(np.count_nonzero(stored != ood))
                raise DatasetError(
                    f"OOD target {stored_path} disagrees with label {frame.label} on {n} px "
                    "(expected 1 exactly where the label is 254 and 255 where it is 255); "
                    "were the files written by different runs? "
                    "Re-run generate, or pass verify_ood=False to trust the label"
                )
        return {"image": image, "label": label, "ood": ood, "name": frame.name}
