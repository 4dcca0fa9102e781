"""Training pairs for ControlNet fine-tuning: (image, encoded label map, caption) from the Cityscapes layout.

As GenVal's ``ControlNet/dataset.py`` (github.com/valeoai/GenVal): a random square crop of
side min(H, W) of image and label map, both resized to ``resolution`` (label maps always
with NEAREST; the image with ``image_interpolation``, NEAREST as GenVal did), image scaled
to [-1, 1], label ids encoded by the chosen conditioning encoding. Captions come from the
caption JSONL (GenVal's shipped ``train.jsonl``/``val.jsonl`` work as they are).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from synthrel_lightning.generators.captions import GENERIC_CAPTION, CaptionFile, MissingCaptions
from synthrel_lightning.generators.encodings import LabelEncoding, get_encoding
from synthrel_lightning.seeding import numpy_generator

__all__ = ["ControlNetPairs", "ControlNetDataModule"]

Interpolation = Literal["nearest", "bilinear", "bicubic"]
CropMode = Literal["random_square", "center_square", "full"]


class ControlNetPairs(Dataset):
    """(image, conditioning, caption) pairs of a Cityscapes-layout split, cropped and resized for ControlNet training.

    Items: ``pixel_values`` (3, R, R) in [-1, 1], ``conditioning`` (C, R, R) in [0, 1],
    ``label_ids`` (R, R) int64, ``caption`` str, ``name`` str. Random crops draw from
    ``numpy_generator(seed, "controlnet-crop", epoch, index)`` (same data after a resume).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        captions: dict[str, str] | str | os.PathLike[str] | None,
        encoding: str | LabelEncoding = "label_ids_1ch",
        resolution: int = 512,
        crop: CropMode = "random_square",
        image_interpolation: Interpolation = "nearest",
        on_missing_caption: MissingCaptions = "error",
        generic_caption: str = GENERIC_CAPTION,
        seed: int = 0,
        max_samples: int | None = None,
    ) -> None:
        from synthrel_lightning.data.cityscapes import CityscapesDataset

        if crop not in ("random_square", "center_square", "full"):
            raise ValueError(f"crop must be 'random_square', 'center_square' or 'full', got {crop!r}")
        if int(resolution) < 8 or int(resolution) % 8:
            raise ValueError(f"resolution must be a positive multiple of 8, got {resolution}")
        self.frames = list(CityscapesDataset(root, split=split, max_samples=max_samples).frames)
        self.encoding = get_encoding(encoding)
        self.resolution, self.crop, self.image_interpolation = int(resolution), crop, image_interpolation
        self.seed, self.epoch = int(seed), 0
        names = [f.name for f in self.frames]
        if captions is None:
            self.captions, self.missing = {n: generic_caption for n in names}, names
        elif isinstance(captions, dict):
            self.captions, self.missing = {n: captions.get(n, generic_caption) for n in names}, []
        else:
            self.captions, self.missing = CaptionFile.read(captions).lookup(names, on_missing_caption, generic_caption)

    def set_epoch(self, epoch: int) -> None:
        """Key the random crops by ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.frames)

    def _window(self, h: int, w: int, index: int) -> tuple[int, int, int, int]:
        if self.crop == "full":
            return 0, 0, h, w
        s = min(h, w)
        if self.crop == "center_square":
            return (h - s) // 2, (w - s) // 2, s, s
        rng = numpy_generator(self.seed, "controlnet-crop", self.epoch, index)
        return int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1)), s, s

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        from synthrel_lightning.data.io import check_same_size, read_image, read_label

        frame = self.frames[index]
        if frame.label is None:
            raise ValueError(f"ControlNetPairs: frame {frame.name!r} has no label map to condition on")
        image, label_ids = read_image(frame.image), read_label(frame.label)
        check_same_size(image, label_ids, frame.image, frame.label)
        y, x, ch, cw = self._window(label_ids.shape[0], label_ids.shape[1], index)
        image, label_ids = image[y : y + ch, x : x + cw], label_ids[y : y + ch, x : x + cw]
        size = (self.resolution, self.resolution)
        if self.crop == "full":
            scale = self.resolution / max(ch, cw)
            size = (max(8, round(cw * scale / 8) * 8), max(8, round(ch * scale / 8) * 8))
        resample = getattr(Image.Resampling, self.image_interpolation.upper())
        image = np.array(Image.fromarray(image).resize(size, resample=resample))
        label_ids = np.array(Image.fromarray(label_ids).resize(size, resample=Image.Resampling.NEAREST))
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1.0
        return {
            "pixel_values": pixels,
            "conditioning": self.encoding.encode_tensor(label_ids, what=f"label ids {frame.label}"),
            "label_ids": torch.from_numpy(label_ids.astype(np.int64)),
            "caption": self.captions[frame.name],
            "name": frame.name,
        }


class ControlNetDataModule(L.LightningDataModule):
    """Cityscapes-layout frames + caption JSONL files -> ControlNet training and validation pairs.

    ``train_captions``/``val_captions``: caption JSONL files (None: ``generic_caption`` for every
    frame). ``encoding`` must match the model's (checked when fitting starts).
    """

    def __init__(
        self,
        root: str = "data/cityscapes",
        train_captions: str | None = None,
        val_captions: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        encoding: str = "label_ids_1ch",
        resolution: int = 512,
        crop: CropMode = "random_square",
        image_interpolation: Interpolation = "nearest",
        on_missing_caption: MissingCaptions = "error",
        generic_caption: str = GENERIC_CAPTION,
        batch_size: int = 8,
        num_workers: int = 4,
        max_train_samples: int | None = None,
        max_val_samples: int | None = 8,
        seed: int = 0,
        write_demo_scenes: bool = False,
    ) -> None:
        super().__init__()
        self.root = root
        self.train_captions, self.val_captions = train_captions, val_captions
        self.train_split, self.val_split = train_split, val_split
        self.encoding = get_encoding(encoding).name
        self.resolution, self.crop, self.image_interpolation = resolution, crop, image_interpolation
        self.on_missing_caption, self.generic_caption = on_missing_caption, generic_caption
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.max_train_samples, self.max_val_samples, self.seed = max_train_samples, max_val_samples, seed
        self.write_demo_scenes = write_demo_scenes
        self.train_set: ControlNetPairs | None = None
        self.val_set: ControlNetPairs | None = None

    def prepare_data(self) -> None:
        """With ``write_demo_scenes``, write the procedural demo scenes to ``root`` first."""
        if self.write_demo_scenes:
            from synthrel_lightning.data.demo import write_demo_cityscapes

            write_demo_cityscapes(self.root, num_train=16, num_val=4)

    def _pairs(self, split: str, captions: str | None, crop: CropMode, max_samples: int | None) -> ControlNetPairs:
        return ControlNetPairs(
            self.root, split, captions, self.encoding, self.resolution, crop, self.image_interpolation,
            self.on_missing_caption, self.generic_caption, self.seed, max_samples,
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        """Index the frames and read the captions."""
        if self.write_demo_scenes and not Path(self.root).is_dir():
            self.prepare_data()
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = self._pairs(self.train_split, self.train_captions, self.crop, self.max_train_samples)
        if self.val_set is None and self.val_split:
            crop: CropMode = "center_square" if self.crop == "random_square" else self.crop
            self.val_set = self._pairs(self.val_split, self.val_captions, crop, self.max_val_samples)

    def set_epoch(self, epoch: int) -> None:
        """Key the training crops by ``epoch`` (called by the ``DataEpochSync`` callback)."""
        if self.train_set is not None:
            self.train_set.set_epoch(epoch)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training pairs."""
        assert self.train_set is not None
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            drop_last=len(self.train_set) >= self.batch_size,
            persistent_workers=False,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation pairs (centre crops), also used for the logged sample renders."""
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
