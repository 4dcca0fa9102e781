"""Real domain-shifted driving datasets with Cityscapes train-id labels: ACDC and Dark Zurich."""

from __future__ import annotations

from collections.abc import Sequence

from synthrel_lightning.data.base import Frame, OnError, Sample, SegmentationDataset, Transform
from synthrel_lightning.data.io import PathLike, check_label_values, check_same_size, read_label
from synthrel_lightning.labels import NUM_CLASSES, VOID_ID, semantic_to_ood_target

__all__ = ["ACDCDataset", "DarkZurichDataset", "ACDC_CONDITIONS", "TRAIN_ID_VALUES"]

ACDC_CONDITIONS: tuple[str, ...] = ("fog", "night", "rain", "snow")
"""The four adverse conditions of ACDC."""
TRAIN_ID_VALUES: tuple[int, ...] = (*range(NUM_CLASSES), VOID_ID)
"""Values a Cityscapes train-id label file may hold."""

_IMAGE_SUFFIX = "_rgb_anon.png"
_LABEL_SUFFIX = "_gt_labelTrainIds.png"
_INVALID_SUFFIX = "_gt_invIds.png"


class _TrainIdDataset(SegmentationDataset):
    """Frames with ``*_gt_labelTrainIds.png`` labels (0..18, 255) and optional ``invalid`` masks."""

    has_semantics = True
    has_ood = False

    def _load(self, frame: Frame) -> Sample:
        image, label = self._read_checked(frame, TRAIN_ID_VALUES, "train ids")
        invalid_path = frame.extras.get("invalid")
        if invalid_path is not None:
            invalid = read_label(invalid_path)
            check_same_size(image, invalid, frame.image, invalid_path)
            # Nonzero = invalid; both 0/1 and 0/255 encodings of the binary mask circulate.
            check_label_values(invalid, (0, 1, 255), invalid_path, "invalid-mask values")
            label = label.copy()
            label[invalid > 0] = VOID_ID
        return {"image": image, "label": label, "ood": semantic_to_ood_target(label), "name": frame.name}

    def _frames_in(
        self, image_pattern: str, image_root: str, label_root: str, layout: str, use_invalid: bool
    ) -> list[Frame]:
        """Pair every ``root/image_pattern`` image with its label (same relative folder under ``label_root``)."""
        candidates = []
        for image in self._glob(image_pattern, layout):
            rel = image.parent.relative_to(self.root / image_root)
            stem = image.name[: -len(_IMAGE_SUFFIX)]
            gt_dir = self.root / label_root / rel
            extras = {"invalid": gt_dir / f"{stem}{_INVALID_SUFFIX}"} if use_invalid else {}
            candidates.append(Frame(stem, image, gt_dir / f"{stem}{_LABEL_SUFFIX}", extras))
        return candidates


class ACDCDataset(_TrainIdDataset):
    """ACDC (Sakaridis et al. 2021).

    Layout: ``rgb_anon/{cond}/{split}/{seq}/*_rgb_anon.png`` + ``gt/{cond}/{split}/{seq}/*_gt_labelTrainIds.png``.

    ``condition`` is one of fog/night/rain/snow or a list of them (frames ordered by
    condition, then path). ``use_invalid_mask`` also reads ``*_gt_invIds.png`` and
    makes its invalid pixels void.
    """

    def __init__(
        self,
        root: PathLike,
        condition: str | Sequence[str] = ACDC_CONDITIONS,
        split: str = "val",
        transform: Transform | None = None,
        on_error: OnError = "raise",
        max_samples: int | None = None,
        use_invalid_mask: bool = False,
    ) -> None:
        conditions = [condition] if isinstance(condition, str) else list(condition)
        bad = [c for c in conditions if c not in ACDC_CONDITIONS]
        if bad or not conditions:
            raise ValueError(f"ACDCDataset: condition must be one or more of {ACDC_CONDITIONS}, got {condition!r}")
        self.conditions = conditions
        self.split = split
        self.use_invalid_mask = use_invalid_mask
        super().__init__(root, transform=transform, on_error=on_error, max_samples=max_samples)

    def _index(self) -> list[Frame]:
        candidates: list[Frame] = []
        for cond in self.conditions:
            layout = (
                f"rgb_anon/{cond}/{self.split}/{{seq}}/*{_IMAGE_SUFFIX}"
                f" + gt/{cond}/{self.split}/{{seq}}/*{_LABEL_SUFFIX}"
            )
            self._require_dir(f"rgb_anon/{cond}/{self.split}", layout)
            self._require_dir(f"gt/{cond}/{self.split}", layout)
            candidates += self._frames_in(
                f"rgb_anon/{cond}/{self.split}/*/*{_IMAGE_SUFFIX}",
                f"rgb_anon/{cond}/{self.split}",
                f"gt/{cond}/{self.split}",
                layout,
                self.use_invalid_mask,
            )
        return self._pair(candidates)


class DarkZurichDataset(_TrainIdDataset):
    """Dark Zurich (Sakaridis et al. 2019) night frames.

    Layout: ``rgb_anon/{split}/night/{seq}/*_rgb_anon.png`` + ``gt/{split}/night/{seq}/*_gt_labelTrainIds.png``.

    The public labelled split is ``val`` (sequence GOPR0356).
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "val",
        transform: Transform | None = None,
        on_error: OnError = "raise",
        max_samples: int | None = None,
        use_invalid_mask: bool = False,
    ) -> None:
        self.split = split
        self.use_invalid_mask = use_invalid_mask
        super().__init__(root, transform=transform, on_error=on_error, max_samples=max_samples)

    def _index(self) -> list[Frame]:
        layout = (
            f"rgb_anon/{self.split}/night/{{seq}}/*{_IMAGE_SUFFIX} + gt/{self.split}/night/{{seq}}/*{_LABEL_SUFFIX}"
        )
        self._require_dir(f"rgb_anon/{self.split}/night", layout)
        self._require_dir(f"gt/{self.split}/night", layout)
        return self._pair(
            self._frames_in(
                f"rgb_anon/{self.split}/night/*/*{_IMAGE_SUFFIX}",
                f"rgb_anon/{self.split}/night",
                f"gt/{self.split}/night",
                layout,
                self.use_invalid_mask,
            )
        )
