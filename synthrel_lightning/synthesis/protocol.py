"""Geometry of the paper's inpainting protocol: context crop, soft box mask, paste-back of the square.

REFERENCE.md §1a: a square box of side ``s``; a context crop of side ``1.5 s`` centred on
it (shifted to stay inside the frame); the crop resized to 512x512 (bicubic); the box
mask resized (nearest) and box-blurred (a 128x128 kernel at 512) into a soft mask; after
inpainting, the crop is resized back and only the central ``s x s`` square is pasted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BoxLike",
    "CropWindow",
    "as_box",
    "context_window",
    "soft_box_mask",
    "crop_to_tensor",
    "paste_square",
    "snap_size",
]

BoxLike = Any
"""A box: a ``Placement`` (``x0``, ``y0``, ``side``), a ``(x0, y0, side)`` tuple or a dict with those keys."""


def as_box(box: BoxLike) -> tuple[int, int, int]:
    """``(x0, y0, side)`` of a Placement, a 3-tuple/list or a mapping with keys x0/y0/side."""
    if hasattr(box, "x0") and hasattr(box, "side"):
        x0, y0, side = box.x0, box.y0, box.side
    elif isinstance(box, dict):
        try:
            x0, y0, side = box["x0"], box["y0"], box["side"]
        except KeyError as e:
            raise ValueError(f"a box mapping needs keys x0, y0, side; got {sorted(box)}") from e
    else:
        try:
            x0, y0, side = box
        except (TypeError, ValueError) as e:
            raise ValueError(f"a box must be a Placement, (x0, y0, side) or a mapping, got {box!r}") from e
    x0, y0, side = int(x0), int(y0), int(side)
    if side < 1:
        raise ValueError(f"box side must be >= 1, got {side}")
    return x0, y0, side


@dataclass(frozen=True)
class CropWindow:
    """A square context crop ``[cx0, cx0 + c) x [cy0, cy0 + c)`` of a frame and the box inside it."""

    cx0: int
    cy0: int
    c: int
    x0: int
    y0: int
    side: int

    @property
    def box_in_crop(self) -> tuple[int, int, int, int]:
        """The box as ``(x0, y0, x1, y1)`` in crop pixels."""
        bx, by = self.x0 - self.cx0, self.y0 - self.cy0
        return bx, by, bx + self.side, by + self.side


def context_window(box: BoxLike, frame_hw: tuple[int, int], context_scale: float = 1.5) -> CropWindow:
    """The context crop of side ``context_scale * side`` centred on the box, shifted to lie inside the frame."""
    x0, y0, side = as_box(box)
    h, w = int(frame_hw[0]), int(frame_hw[1])
    if x0 < 0 or y0 < 0 or x0 + side > w or y0 + side > h:
        raise ValueError(f"box (x0={x0}, y0={y0}, side={side}) does not fit in a {w}x{h} frame")
    c = min(int(round(context_scale * side)), h, w)
    c = max(c, side)
    m = (c - side) // 2
    cx0 = int(np.clip(x0 - m, 0, w - c))
    cy0 = int(np.clip(y0 - m, 0, h - c))
    return CropWindow(cx0, cy0, c, x0, y0, side)


def soft_box_mask(window: CropWindow, resolution: int = 512, blur_kernel: int = 128) -> torch.Tensor:
    """(1, R, R) float mask: the box at crop size, nearest-resized to R, box-blurred with a ``blur_kernel`` kernel."""
    hard = torch.zeros(1, 1, window.c, window.c)
    bx0, by0, bx1, by1 = window.box_in_crop
    hard[..., by0:by1, bx0:bx1] = 1.0
    mask = F.interpolate(hard, size=(resolution, resolution), mode="nearest")
    k = int(blur_kernel)
    if k > 1:
        # A k x k mean filter with reflected borders, like cv2.blur on the mask image.
        lo, hi = (k - 1) // 2, k // 2
        padded = (
            F.pad(mask, (lo, hi, lo, hi), mode="reflect")
            if max(lo, hi) < resolution
            else F.pad(mask, (lo, hi, lo, hi), mode="replicate")
        )
        # Separable (k x 1 then 1 x k): the same mean, ~k/2 times cheaper.
        mask = F.avg_pool2d(F.avg_pool2d(padded, kernel_size=(k, 1), stride=1), kernel_size=(1, k), stride=1)
    return mask[0].clamp_(0.0, 1.0)


def crop_to_tensor(frame: np.ndarray, window: CropWindow, resolution: int = 512) -> torch.Tensor:
    """(3, R, R) float tensor in [0, 1]: the frame's context crop resized bicubically to R."""
    crop = frame[window.cy0 : window.cy0 + window.c, window.cx0 : window.cx0 + window.c]
    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float().div_(255.0)
    if window.c != resolution:
        t = F.interpolate(
            t, size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=window.c > resolution
        )
    return t[0].clamp_(0.0, 1.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] tensor -> (H, W, 3) uint8 array."""
    return t.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def paste_square(frame: np.ndarray, inpainted: torch.Tensor, window: CropWindow) -> tuple[np.ndarray, np.ndarray]:
    """Resize the inpainted crop (3, R, R) back to the crop size and paste only the box square.

    Returns the new frame (a copy) and the pasted ``side x side`` patch (uint8).
    """
    t = inpainted.detach().float()[None]
    if t.shape[-1] != window.c:
        t = F.interpolate(
            t, size=(window.c, window.c), mode="bicubic", align_corners=False, antialias=t.shape[-1] > window.c
        )
    bx0, by0, bx1, by1 = window.box_in_crop
    patch = to_uint8(t[0, :, by0:by1, bx0:bx1])
    out = frame.copy()
    out[window.y0 : window.y0 + window.side, window.x0 : window.x0 + window.side] = patch
    return out, patch


def snap_size(height: int, width: int, max_side: int, multiple: int = 8) -> tuple[int, int]:
    """A (height, width) with the frame's aspect ratio, long side <= ``max_side``, both multiples of ``multiple``."""
    scale = min(1.0, max_side / max(height, width))
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w
