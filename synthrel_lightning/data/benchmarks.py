"""Real OOD-segmentation benchmarks: Road Anomaly, SegmentMeIfYouCan, Fishyscapes Lost & Found.

Each sample's ``ood`` is the binary OOD target (0 in-distribution, 1 OOD, 255 void) and
``label`` is all 255: these benchmarks carry no semantic classes.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np

from synthrel_lightning.data.base import Frame, OnError, Sample, SegmentationDataset, Transform, void_like
from synthrel_lightning.data.io import DatasetError, PathLike, check_same_size, read_image, read_label
from synthrel_lightning.labels import OOD_NEGATIVE, OOD_POSITIVE, VOID_ID

__all__ = ["RoadAnomalyDataset", "SMIYCDataset", "FishyscapesLostAndFoundDataset", "BinaryOODDataset"]

_BINARY_VALUES = (OOD_NEGATIVE, OOD_POSITIVE, VOID_ID)


class BinaryOODDataset(SegmentationDataset):
    """Base of the benchmarks whose label files hold 0 (in), 1 (OOD) and 255 (void) directly."""

    has_semantics = False
    has_ood = True

    def _load(self, frame: Frame) -> Sample:
        image, ood = self._read_checked(frame, _BINARY_VALUES, "OOD label values")
        return {"image": image, "label": void_like(image), "ood": ood, "name": frame.name}


class RoadAnomalyDataset(SegmentationDataset):
    """Road Anomaly (Lis et al. 2019).

    Layout: ``frame_list.json``, ``frames/<name>.jpg``, ``frames/<name>.labels/labels_semantic.png``.

    Label values >= 2 are anomalies (OOD 1); 0 (and 1) are road scene (0). No void.
    """

    has_semantics = False
    has_ood = True
    _LAYOUT = "frame_list.json + frames/<name>.jpg + frames/<name>.labels/labels_semantic.png"

    def __init__(
        self,
        root: PathLike,
        transform: Transform | None = None,
        on_error: OnError = "raise",
        max_samples: int | None = None,
    ) -> None:
        super().__init__(root, transform=transform, on_error=on_error, max_samples=max_samples)

    def _index(self) -> list[Frame]:
        list_file = self.root / "frame_list.json"
        if not list_file.is_file():
            raise DatasetError(
                f"{type(self).__name__}: expected {list_file} (layout: {self._LAYOUT}), but it was not found"
            )
        frames_dir = self._require_dir("frames", self._LAYOUT)
        try:
            names = json.loads(list_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{type(self).__name__}: cannot parse {list_file} as JSON: {exc}") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"{type(self).__name__}: {list_file} must hold a JSON list of image file names")
        candidates = []
        for file_name in names:
            stem = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
            label = frames_dir / f"{stem}.labels" / "labels_semantic.png"
            candidates.append(Frame(stem, frames_dir / file_name, label))
        return self._pair(candidates)

    def _load(self, frame: Frame) -> Sample:
        assert frame.label is not None
        image = read_image(frame.image)
        raw = read_label(frame.label)
        check_same_size(image, raw, frame.image, frame.label)
        ood = (raw >= 2).astype(np.uint8)
        return {"image": image, "label": void_like(image), "ood": ood, "name": frame.name}


class SMIYCDataset(BinaryOODDataset):
    """SegmentMeIfYouCan RoadAnomaly21 (``track="anomaly"``) or RoadObstacle21 (``track="obstacle"``).

    Layout: ``dataset_AnomalyTrack/images/{id}.jpg`` or ``dataset_ObstacleTrack/images/{id}.webp``
    with ``labels_masks/{id}_labels_semantic.png``. ``root`` may be the folder holding the
    track folders or a track folder itself. With ``split="validation"`` the frames are the ids
    starting with ``validation`` (an image of that split without its label is an error); with
    ``split=None`` every image that has a label; with ``split="test"`` every image whose label
    the benchmark withholds, served unlabelled (``label``/``ood`` all void) for prediction and
    submission (``ood`` then holds no ground truth: ``has_ood`` is False).
    """

    _TRACKS = {"anomaly": ("dataset_AnomalyTrack", ".jpg"), "obstacle": ("dataset_ObstacleTrack", ".webp")}

    def __init__(
        self,
        root: PathLike,
        track: Literal["anomaly", "obstacle"] = "anomaly",
        split: str | None = "validation",
        transform: Transform | None = None,
        on_error: OnError = "raise",
        max_samples: int | None = None,
        image_ext: str | None = None,
    ) -> None:
        if track not in self._TRACKS:
            raise ValueError(f"SMIYCDataset: track must be one of {sorted(self._TRACKS)}, got {track!r}")
        self.track = track
        self.split = split
        self.image_ext = image_ext or self._TRACKS[track][1]
        if split == "test":
            self.has_ood = False  # type: ignore[misc]
        super().__init__(root, transform=transform, on_error=on_error, max_samples=max_samples)

    def _index(self) -> list[Frame]:
        folder = self._TRACKS[self.track][0]
        layout = f"{folder}/images/{{id}}{self.image_ext} + {folder}/labels_masks/{{id}}_labels_semantic.png"
        if self.root.name == folder or (not (self.root / folder).is_dir() and (self.root / "labels_masks").is_dir()):
            prefix = ""
        else:
            prefix = folder + "/"
            self._require_dir(folder, layout)
        self._require_dir(f"{prefix}images", layout)
        self._require_dir(f"{prefix}labels_masks", layout)
        images = self._glob(f"{prefix}images/*{self.image_ext}", layout)
        label_dir = self.root / prefix / "labels_masks"
        candidates = []
        for image in images:
            stem = image.name[: -len(self.image_ext)]
            label = label_dir / f"{stem}_labels_semantic.png"
            if self.split == "test":
                if not label.is_file():
                    candidates.append(Frame(stem, image, None))
                continue
            if self.split is not None:
                if not stem.startswith(self.split):
                    continue
            elif not label.is_file():
                continue  # test images: labels withheld by the benchmark
            candidates.append(Frame(stem, image, label))
        if not candidates:
            raise DatasetError(
                f"SMIYCDataset: no {self.track}-track images of split {self.split!r} "
                f"under {self.root / prefix / 'images'} "
                + (
                    "(split 'test' = images without a label file)"
                    if self.split == "test"
                    else f"(expected names starting with {self.split!r}; layout: {layout})"
                )
            )
        return self._pair(candidates)

    def _load(self, frame: Frame) -> Sample:
        if frame.label is None:
            image = read_image(frame.image)
            return {"image": image, "label": void_like(image), "ood": void_like(image), "name": frame.name}
        return super()._load(frame)


class FishyscapesLostAndFoundDataset(BinaryOODDataset):
    """Fishyscapes Lost & Found, labels 0/1/255.

    Layout: ``{image_dir}/{name}{image_suffix}`` + ``{label_dir}/{name}{label_suffix}``.

    Redistributed archives name folders and files differently, so every part is configurable.
    """

    def __init__(
        self,
        root: PathLike,
        image_dir: str = "images",
        label_dir: str = "labels",
        image_suffix: str = ".png",
        label_suffix: str = ".png",
        transform: Transform | None = None,
        on_error: OnError = "raise",
        max_samples: int | None = None,
    ) -> None:
        if not image_suffix or not label_suffix:
            raise ValueError("FishyscapesLostAndFoundDataset: image_suffix and label_suffix must be non-empty")
        self.image_dir = image_dir
        self.label_dir = label_dir
        self.image_suffix = image_suffix
        self.label_suffix = label_suffix
        super().__init__(root, transform=transform, on_error=on_error, max_samples=max_samples)

    def _index(self) -> list[Frame]:
        layout = f"{self.image_dir}/{{name}}{self.image_suffix} + {self.label_dir}/{{name}}{self.label_suffix}"
        self._require_dir(self.image_dir, layout)
        label_dir = self._require_dir(self.label_dir, layout)
        images = self._glob(f"{self.image_dir}/*{self.image_suffix}", layout)
        same_dir = label_dir.resolve() == (self.root / self.image_dir).resolve()
        candidates = []
        for image in images:
            if same_dir and self.label_suffix != self.image_suffix and image.name.endswith(self.label_suffix):
                continue  # a label file sharing the image folder, not an image
            stem = image.name[: -len(self.image_suffix)]
            candidates.append(Frame(stem, image, label_dir / f"{stem}{self.label_suffix}"))
        return self._pair(candidates)
