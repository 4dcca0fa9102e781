"""Albumentations pipelines that keep ``image``, ``label`` and ``ood`` aligned and end in model-ready tensors.

A raw sample (``image`` uint8 (H,W,3), ``label``/``ood`` uint8 (H,W)) becomes ``image``
float32 (3,H,W) normalised with the ImageNet statistics, ``label``/``ood`` int64 (H,W);
other keys (``name``, ...) pass through unchanged. Masks are always resized with
nearest-neighbour interpolation and padded with void (255).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from synthrel_lightning.labels import VOID_ID
from synthrel_lightning.seeding import derive_seed, worker_context

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MASK_KEYS",
    "SegmentationTransform",
    "train_transform",
    "eval_transform",
    "denormalize",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, in [0, 1]."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet, in [0, 1]."""
MASK_KEYS: tuple[str, ...] = ("label", "ood")
"""Sample keys transformed as masks (nearest interpolation, void padding)."""


class SegmentationTransform:
    """Picklable ``sample -> sample`` callable running an albumentations pipeline on image, label and ood.

    ``transforms`` is an ``albumentations.Compose`` or a list of albumentations transforms
    (e.g. from YAML); ``ood`` is registered as an extra mask target, mask interpolation is
    forced to nearest, and with ``normalize`` an ``albumentations.Normalize(mean, std)``
    is appended before conversion to tensors.

    Called with ``seed=`` (as the DataModules do, with a seed derived from
    ``(seed, epoch, sample index)``), the draws of that call depend on that seed alone, so
    a sample is augmented identically whatever the worker, rank or resume. Called without,
    the random state is re-seeded once per process from ``seed``, the torch seed of the
    process (per DataLoader worker: different per worker and epoch, reproducible under
    ``seed_everything``) and the DDP rank, so workers never repeat each other's augmentations.
    """

    def __init__(
        self,
        transforms: A.Compose | Sequence[A.BasicTransform] | None = None,
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = None,
    ) -> None:
        if transforms is None:
            steps: list[Any] = []
        elif isinstance(transforms, A.BaseCompose):
            steps = [transforms]
        else:
            steps = list(transforms)
        for i, t in enumerate(steps):
            if not isinstance(t, (A.BasicTransform, A.BaseCompose)):
                raise TypeError(
                    f"SegmentationTransform: transforms[{i}] is {type(t).__name__}; "
                    "expected an albumentations transform"
                )
        if normalize and any(isinstance(t, A.Normalize) for t in _flatten(steps)):
            raise ValueError(
                "SegmentationTransform: the pipeline already contains Normalize; pass normalize=False "
                "or remove it (normalize=True appends Normalize(mean, std) itself)"
            )
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"SegmentationTransform: mean/std must be 3 values (std > 0), got {mean!r}, {std!r}")
        self.normalize = normalize
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = seed
        if normalize:
            steps.append(A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0))
        self.pipeline = A.Compose(
            steps,
            additional_targets={"ood": "mask"},
            mask_interpolation=cv2.INTER_NEAREST,
            seed=seed,
        )
        self._seeded_for: tuple[int, int] | None = None

    def _reseed(self) -> None:
        """Give this process (worker, rank) its own augmentation stream, once."""
        key = (os.getpid(), torch.initial_seed())
        if key == self._seeded_for:
            return
        rank, worker = worker_context()
        s = derive_seed(self.seed if self.seed is not None else 0, torch.initial_seed() & ((1 << 63) - 1), rank, worker)
        self.pipeline.set_random_seed(s & 0xFFFFFFFF)
        self._seeded_for = key

    def __call__(self, sample: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        """Transform one sample dict (its random draws keyed by ``seed`` if given); returns a new dict of tensors."""
        if "image" not in sample:
            raise KeyError(f"SegmentationTransform: sample has no 'image' (keys: {sorted(sample)})")
        if seed is None:
            self._reseed()
        else:
            self.pipeline.set_random_seed(int(seed) & 0xFFFFFFFF)
            self._seeded_for = None  # the next unkeyed call restarts this process's own stream
        inputs: dict[str, Any] = {"image": sample["image"]}
        for key in MASK_KEYS:
            if key in sample:
                inputs["mask" if key == "label" else key] = sample[key]
        out = self.pipeline(**inputs)
        result = dict(sample)
        result["image"] = self._image_tensor(out["image"])
        if "label" in sample:
            result["label"] = _mask_tensor(out["mask"])
        if "ood" in sample:
            result["ood"] = _mask_tensor(out["ood"])
        return result

    def _image_tensor(self, image: np.ndarray | Tensor) -> Tensor:
        t = _as_tensor(image.transpose(2, 0, 1)) if isinstance(image, np.ndarray) else image
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(
                f"SegmentationTransform: pipeline produced an image of shape {tuple(t.shape)}; expected 3 channels"
            )
        return t.float().contiguous()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_seeded_for"] = None
        return state

    def __repr__(self) -> str:
        return f"SegmentationTransform({self.pipeline!r})"


def _flatten(steps: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for t in steps:
        out.append(t)
        if isinstance(t, A.BaseCompose):
            out.extend(_flatten(list(t.transforms)))
    return out


def _as_tensor(arr: np.ndarray) -> Tensor:
    # Untouched inputs come back as they went in, possibly read-only; torch needs writable memory.
    arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _mask_tensor(mask: np.ndarray | Tensor) -> Tensor:
    t = _as_tensor(mask) if isinstance(mask, np.ndarray) else mask
    if t.ndim == 3 and t.shape[-1] == 1:
        t = t[..., 0]
    return t.long()


def _mean_fill(mean: Sequence[float]) -> tuple[int, int, int]:
    # Padding with the mean colour makes padded pixels exactly 0 after normalisation.
    return tuple(int(round(m * 255)) for m in mean)  # type: ignore[return-value]


def train_transform(
    crop_size: tuple[int, int] = (512, 1024),
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: float = 0.2,
    color_jitter_p: float = 0.5,
    base_size: tuple[int, int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int | None = None,
) -> SegmentationTransform:
    """Standard segmentation training augmentation.

    Steps: [resize to base_size,] random scale, pad (void), random crop, flip, colour jitter.

    Sizes are ``(height, width)``; ``color_jitter`` is the brightness/contrast/saturation
    strength (hue gets a quarter of it), 0 disables it.
    """
    ch, cw = (int(v) for v in crop_size)
    lo, hi = (float(v) for v in scale_range)
    if ch < 1 or cw < 1:
        raise ValueError(f"train_transform: crop_size must be positive (h, w), got {crop_size!r}")
    if not 0 < lo <= hi:
        raise ValueError(f"train_transform: scale_range must satisfy 0 < low <= high, got {scale_range!r}")
    if not 0.0 <= hflip <= 1.0 or not 0.0 <= color_jitter_p <= 1.0:
        raise ValueError(
            f"train_transform: hflip and color_jitter_p are probabilities in [0, 1], got {hflip}, {color_jitter_p}"
        )
    if color_jitter < 0:
        raise ValueError(f"train_transform: color_jitter must be >= 0, got {color_jitter}")
    steps: list[A.BasicTransform] = []
    if base_size is not None:
        steps.append(A.Resize(int(base_size[0]), int(base_size[1]), interpolation=cv2.INTER_LINEAR))
    if (lo, hi) != (1.0, 1.0):
        # RandomScale draws a factor uniformly from 1 + scale_limit.
        steps.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0))
    steps += [
        A.PadIfNeeded(
            min_height=ch, min_width=cw, border_mode=cv2.BORDER_CONSTANT, fill=_mean_fill(mean), fill_mask=VOID_ID
        ),
        A.RandomCrop(height=ch, width=cw),
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0 and color_jitter_p > 0:
        cj = float(color_jitter)
        steps.append(
            A.ColorJitter(
                brightness=(max(0.0, 1 - cj), 1 + cj),
                contrast=(max(0.0, 1 - cj), 1 + cj),
                saturation=(max(0.0, 1 - cj), 1 + cj),
                hue=(-min(cj / 4, 0.5), min(cj / 4, 0.5)),
                p=color_jitter_p,
            )
        )
    return SegmentationTransform(steps, mean=mean, std=std, seed=seed)


def eval_transform(
    size: tuple[int, int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> SegmentationTransform:
    """Evaluation transform: optional resize to ``size`` (h, w; masks nearest), normalisation, tensors."""
    steps: list[A.BasicTransform] = []
    if size is not None:
        h, w = (int(v) for v in size)
        if h < 1 or w < 1:
            raise ValueError(f"eval_transform: size must be positive (h, w), got {size!r}")
        steps.append(A.Resize(h, w, interpolation=cv2.INTER_LINEAR))
    return SegmentationTransform(steps, mean=mean, std=std)


def denormalize(
    image: Tensor | np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Undo normalisation for display: (3,H,W) or (B,3,H,W) float -> uint8 (H,W,3) or (B,H,W,3)."""
    arr = image.detach().float().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=np.float32)
    if arr.ndim not in (3, 4) or arr.shape[-3] != 3:
        raise ValueError(f"denormalize: expected a (3,H,W) or (B,3,H,W) image, got shape {arr.shape}")
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    rgb = (arr * s + m) * 255.0
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, -3, -1))
