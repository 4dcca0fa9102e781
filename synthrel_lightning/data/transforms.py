"""Albumentations pipelines that keep ``image``, ``label`` and ``ood`` aligned and end in model-ready tensors.

A raw sample (``image`` uint8 (H,W,3), ``label``/``ood`` uint8 (H,W)) becomes ``image``
float32 (3,H,W) normalised with the ImageNet statistics, ``label``/``ood`` int64 (H,W);
other keys (``name``, ...) pass through unchanged. Masks are always resized with
nearest-neighbour interpolation and padded with void (255).

This module holds :class:`SegmentationTransform`, the standard pipelines and (de)normalisation; the
fast scale-crop and colour-jitter steps are in :mod:`~synthrel_lightning.data.augmentations`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

from synthrel_lightning.data.augmentations import FastColorJitter, RandomScaleCrop, adjust_saturation, scale_crop
from synthrel_lightning.labels import VOID_ID
from synthrel_lightning.seeding import derive_seed, worker_context

__all__ = [
    "FastColorJitter",
    "adjust_saturation",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MASK_KEYS",
    "RandomScaleCrop",
    "SegmentationTransform",
    "scale_crop",
    "train_transform",
    "eval_transform",
    "denormalize",
    "normalize_images",
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
    forced to nearest, and with ``normalize`` the image is normalised with ``mean``/``std``
    (what ``albumentations.Normalize(mean, std)`` computes) while it becomes a tensor.

    Called with ``seed=`` (as the DataModules do, with a seed derived from
    ``(seed, epoch, sample index)``), the draws of that call depend on that seed alone, so
    a sample is augmented identically whatever the worker, rank or resume. Called without,
    the random state is re-seeded once per process from ``seed``, the torch seed of the
    process (per DataLoader worker: different per worker and epoch, reproducible under
    ``seed_everything``) and the DDP rank, so workers never repeat each other's augmentations.

    ``output="uint8"`` leaves normalisation to the consumer: ``image`` is the augmented uint8
    (3, H, W) tensor (4x fewer bytes through the DataLoader's worker queue and pinned memory),
    to be normalised on the device by :func:`normalize_images` with this transform's
    ``mean``/``std``, as :class:`~synthrel_lightning.data.datamodule.SegmentationDataModule`
    does in ``on_after_batch_transfer``.
    """

    def __init__(
        self,
        transforms: A.Compose | Sequence[A.BasicTransform] | None = None,
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = None,
        output: Literal["float", "uint8"] = "float",
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
        if output not in ("float", "uint8"):
            raise ValueError(f"SegmentationTransform: output must be 'float' or 'uint8', got {output!r}")
        if output == "uint8" and any(isinstance(t, A.Normalize) for t in _flatten(steps)):
            raise ValueError(
                "SegmentationTransform: output='uint8' defers normalisation to the device; remove Normalize "
                "from the pipeline (mean/std are given to the constructor)"
            )
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"SegmentationTransform: mean/std must be 3 values (std > 0), got {mean!r}, {std!r}")
        self.normalize = normalize
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = seed
        self.output = output
        # Normalisation runs after the pipeline, straight into the (3, H, W) float tensor
        # (per-channel lookup tables on uint8: ~3x cheaper than albumentations' Normalize + transpose).
        self._luts: list[np.ndarray] | None = None
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

    def __call__(self, sample: Mapping[str, Any], seed: int | None = None) -> Any:
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

    def _normalized(self, image: np.ndarray) -> Tensor:
        """``(image / 255 - mean) / std`` as a float32 (3, H, W) tensor, what ``A.Normalize`` computes."""
        if image.dtype == np.uint8:
            if self._luts is None:
                self._luts = [
                    ((np.arange(256, dtype=np.float64) - 255.0 * m) / (255.0 * s)).astype(np.float32)
                    for m, s in zip(self.mean, self.std)
                ]
            out = np.empty((3, *image.shape[:2]), np.float32)
            for c, plane in enumerate(cv2.split(image)):
                cv2.LUT(plane, self._luts[c], dst=out[c])
            return torch.from_numpy(out)
        mean = np.asarray(self.mean, np.float32) * 255.0
        inv_std = 1.0 / (np.asarray(self.std, np.float32) * 255.0)
        return torch.from_numpy(np.ascontiguousarray(((image.astype(np.float32) - mean) * inv_std).transpose(2, 0, 1)))

    def _image_tensor(self, image: np.ndarray | Tensor) -> Tensor:
        if self.normalize and self.output == "float":
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"SegmentationTransform: pipeline produced a {type(image).__name__} image of shape "
                    f"{tuple(image.shape)}; normalize=True expects an (H, W, 3) array (drop ToTensorV2 from the "
                    "pipeline, or pass normalize=False)"
                )
            return self._normalized(image)
        t = _as_tensor(image.transpose(2, 0, 1)) if isinstance(image, np.ndarray) else image
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(
                f"SegmentationTransform: pipeline produced an image of shape {tuple(t.shape)}; expected 3 channels"
            )
        if self.output == "uint8":
            if t.dtype != torch.uint8:
                raise ValueError(
                    f"SegmentationTransform(output='uint8'): pipeline produced a {t.dtype} image; "
                    "expected uint8 (leave out steps that convert to float)"
                )
            return t.contiguous()
        return t.float().contiguous()

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("output", "float")  # pickled before the option existed
        state.setdefault("_luts", None)
        self.__dict__.update(state)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_seeded_for"] = None
        state["_luts"] = None
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
    output: Literal["float", "uint8"] = "float",
) -> SegmentationTransform:
    """Standard segmentation training augmentation.

    Steps: [resize to base_size,] random scale, pad (void), random crop (one step,
    :class:`RandomScaleCrop`: only the crop window is interpolated), flip, colour jitter
    (on uint8), then normalisation (``output="float"``) or none (``output="uint8"``: normalise
    on the device with :func:`normalize_images`).

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
    steps.append(RandomScaleCrop(ch, cw, scale_range=(lo, hi), fill=_mean_fill(mean), fill_mask=VOID_ID))
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0 and color_jitter_p > 0:
        cj = float(color_jitter)
        steps.append(
            FastColorJitter(
                brightness=(max(0.0, 1 - cj), 1 + cj),
                contrast=(max(0.0, 1 - cj), 1 + cj),
                saturation=(max(0.0, 1 - cj), 1 + cj),
                hue=(-min(cj / 4, 0.5), min(cj / 4, 0.5)),
                p=color_jitter_p,
            )
        )
    return SegmentationTransform(steps, mean=mean, std=std, seed=seed, output=output)


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


def normalize_images(
    images: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """uint8 (3,H,W) or (B,3,H,W) images -> float32 ``(x / 255 - mean) / std`` on their device; float passes through."""
    if images.dtype != torch.uint8:
        return images
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"normalize_images: expected (3,H,W) or (B,3,H,W) uint8 images, got {tuple(images.shape)}")
    m = torch.tensor([255.0 * v for v in mean], device=images.device).view(3, 1, 1)
    inv = torch.tensor([1.0 / (255.0 * v) for v in std], device=images.device).view(3, 1, 1)
    return (images.float() - m) * inv


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
