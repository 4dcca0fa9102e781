"""Two fast albumentations steps of the training pipeline: a random scale-pad-crop and a colour jitter.

:class:`RandomScaleCrop` (with :func:`scale_crop`) is ``RandomScale`` + centred ``PadIfNeeded`` +
``RandomCrop`` computing only the crop window; :class:`FastColorJitter` (with
:func:`adjust_saturation`) is albumentations' ``ColorJitter`` with a one-pass saturation step.
:func:`~synthrel_lightning.data.transforms.train_transform` assembles them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import albumentations.augmentations.pixel.functional as albu_pixel
import cv2
import numpy as np

from synthrel_lightning.labels import VOID_ID

__all__ = ["FastColorJitter", "RandomScaleCrop", "adjust_saturation", "scale_crop"]


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
