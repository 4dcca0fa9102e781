"""Albumentations pipelines that keep ``image``, ``label`` and ``ood`` aligned and end in model-ready tensors.

A raw sample (``image`` uint8 (H,W,3), ``label``/``ood`` uint8 (H,W)) becomes ``image``
float32 (3,H,W) normalised with the ImageNet statistics, ``label``/``ood`` int64 (H,W);
other keys (``name``, ...) pass through unchanged. Masks are always resized with
nearest-neighbour interpolation and padded with void (255).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import albumentations as A
import albumentations.augmentations.pixel.functional as albu_pixel
import cv2
import numpy as np
import torch
from torch import Tensor

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


def _window(src: int, scaled: int, crop: int, pad_before: int, start: int) -> tuple[int, int, int]:
    """Output span ``[d0, d1)`` covered by the scaled frame, and its first row/column ``o`` in scaled coordinates."""
    d0 = max(0, pad_before - start)
    d1 = min(crop, pad_before + scaled - start)
    return d0, max(d0, d1), d0 + start - pad_before


def _nearest_index(src: int, scaled: int, first: int, count: int) -> np.ndarray:
    """Source rows/columns of ``cv2.resize(..., INTER_NEAREST)`` for scaled positions ``first .. first+count-1``."""
    inverse = 1.0 / (scaled / src)  # what OpenCV computes: 1 / (dst / src)
    return np.minimum(np.floor(np.arange(first, first + count) * inverse).astype(np.intp), src - 1)


def scale_crop(
    array: np.ndarray,
    scaled_size: tuple[int, int],
    crop_size: tuple[int, int],
    pad: tuple[int, int],
    start: tuple[int, int],
    fill: float | Sequence[float],
    nearest: bool,
) -> np.ndarray:
    """Crop window ``start`` (y, x) of ``array`` resized to ``scaled_size`` and padded by ``pad`` (top, left).

    Computes only the window, never the whole scaled frame. Nearest sampling (masks) picks
    exactly the pixels ``cv2.resize(..., INTER_NEAREST)`` picks; bilinear sampling (images)
    uses ``cv2.resize``'s pixel-centre mapping and border rule through ``cv2.warpAffine``
    (its 1/32-pixel fixed point: within a couple of grey levels of ``cv2.resize`` at edges).
    Pixels outside the scaled frame are ``fill``.
    """
    h, w = array.shape[:2]
    sh, sw = scaled_size
    ch, cw = crop_size
    y0, y1, oy = _window(h, sh, ch, pad[0], start[0])
    x0, x1, ox = _window(w, sw, cw, pad[1], start[1])
    out = np.empty((ch, cw, *array.shape[2:]), dtype=array.dtype)
    if y0 > 0 or x0 > 0 or y1 < ch or x1 < cw:
        out[...] = fill
    if y1 <= y0 or x1 <= x0:
        return out
    if (sh, sw) == (h, w):
        out[y0:y1, x0:x1] = array[oy : oy + y1 - y0, ox : ox + x1 - x0]
    elif nearest:
        rows = _nearest_index(h, sh, oy, y1 - y0)
        cols = _nearest_index(w, sw, ox, x1 - x0)
        out[y0:y1, x0:x1] = np.take(array[rows], cols, axis=1)
    else:
        fy, fx = h / sh, w / sw  # cv2.resize: src = (dst + 0.5) * src_size / dst_size - 0.5
        # The source rows/columns the window's bilinear taps reach (with a margin for fixed-point rounding).
        ya = max(0, int(np.floor((oy + 0.5) * fy - 0.5)) - 2)
        yb = min(h, int(np.ceil((oy + y1 - y0 - 0.5) * fy - 0.5)) + 3)
        xa = max(0, int(np.floor((ox + 0.5) * fx - 0.5)) - 2)
        xb = min(w, int(np.ceil((ox + x1 - x0 - 0.5) * fx - 0.5)) + 3)
        source = array[ya:yb, xa:xb]
        three = source.ndim == 3 and source.shape[2] == 3 and source.dtype == np.uint8
        if three:
            # OpenCV warps 4-channel uint8 ~10x faster than 3-channel: widen only the region read.
            source = cv2.cvtColor(source, cv2.COLOR_RGB2RGBA)
        matrix = np.array([[fx, 0.0, (ox + 0.5) * fx - 0.5 - xa], [0.0, fy, (oy + 0.5) * fy - 0.5 - ya]])
        window = cv2.warpAffine(
            np.ascontiguousarray(source),
            matrix,
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        if three:
            window = cv2.cvtColor(window, cv2.COLOR_RGBA2RGB)
        out[y0:y1, x0:x1] = window.reshape(y1 - y0, x1 - x0, *array.shape[2:])
    return out


class RandomScaleCrop(A.DualTransform):
    """Random scale, centre padding up to the crop size, then a random crop: computing only the crop window.

    Equivalent to ``RandomScale`` + ``PadIfNeeded`` (centred) + ``RandomCrop``: the scale is drawn
    uniformly from ``scale_range``, the frame of size ``int(h*s) x int(w*s)`` padded to at least
    ``(height, width)`` (image ``fill``, masks ``fill_mask``) and a crop position drawn uniformly;
    but only the ``height x width`` window is interpolated (bilinear image, nearest masks), so
    the cost no longer grows with the square of the scale (see :func:`scale_crop`).
    """

    def __init__(
        self,
        height: int,
        width: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        fill: float | Sequence[float] = 0,
        fill_mask: float = VOID_ID,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        lo, hi = (float(v) for v in scale_range)
        if int(height) < 1 or int(width) < 1 or not 0 < lo <= hi:
            raise ValueError(
                f"RandomScaleCrop: need height, width >= 1 and 0 < low <= high, got {height}, {width}, {scale_range!r}"
            )
        self.height, self.width = int(height), int(width)
        self.scale_range = (lo, hi)
        self.fill = tuple(fill) if isinstance(fill, Sequence) else fill
        self.fill_mask = fill_mask

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw the scale and the crop position for this frame."""
        h, w = params["shape"][:2]
        s = self.py_random.uniform(*self.scale_range)
        sh, sw = max(1, int(h * s)), max(1, int(w * s))
        ph, pw = max(sh, self.height), max(sw, self.width)
        y = int((ph - self.height + 1) * self.py_random.random())
        x = int((pw - self.width + 1) * self.py_random.random())
        return {"scaled_size": (sh, sw), "pad": ((ph - sh) // 2, (pw - sw) // 2), "start": (y, x)}

    def apply(self, img: np.ndarray, scaled_size=(1, 1), pad=(0, 0), start=(0, 0), **params: Any) -> np.ndarray:
        """The image window (bilinear)."""
        return scale_crop(img, scaled_size, (self.height, self.width), pad, start, self.fill, nearest=False)

    def apply_to_mask(
        self, mask: np.ndarray, scaled_size=(1, 1), pad=(0, 0), start=(0, 0), **params: Any
    ) -> np.ndarray:
        """The mask window (nearest, void outside the frame)."""
        return scale_crop(mask, scaled_size, (self.height, self.width), pad, start, self.fill_mask, nearest=True)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Constructor arguments, for ``albumentations`` serialisation."""
        return ("height", "width", "scale_range", "fill", "fill_mask")


_GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma, as OpenCV's RGB -> GRAY


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend an RGB image with its grey version: ``factor * img + (1 - factor) * grey`` (torchvision semantics).

    uint8 images take one 3x3 colour transform (OpenCV fixed point, saturating) from the
    unrounded grey value, where albumentations first rounds the grey image to uint8 and then
    blends: results differ by at most 1 grey level. Other images go to albumentations.
    """
    if factor == 1 or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        return albu_pixel.adjust_saturation_torchvision(img, factor)
    f = float(factor)
    matrix = f * np.eye(3, dtype=np.float32) + (1.0 - f) * np.tile(_GREY_WEIGHTS, (3, 1))
    return cv2.transform(img, matrix)


class FastColorJitter(A.ColorJitter):
    """albumentations' ColorJitter (same arguments, same random parameters and order) with a one-pass saturation.

    Brightness, contrast and hue are albumentations' own functions; saturation is
    :func:`adjust_saturation` (about 9x faster on uint8 512x1024 images; within 1 grey level,
    which a later contrast or 8-bit HSV hue step can carry to a few levels on rare pixels).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transforms: list[Any] = [*self.transforms]
        self.transforms[2] = adjust_saturation


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
