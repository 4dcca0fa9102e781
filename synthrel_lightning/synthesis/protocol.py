"""Geometry of the paper's inpainting protocol: context crop, soft box mask, paste-back of the square.

Loiseau et al., "Reliability in Semantic Segmentation: Can We Use Synthetic Data?", ECCV 2024
(arXiv 2312.09231; github.com/valeoai/GenVal): a square box of side ``s``; a context crop of
side ``1.5 s`` centred on it (shifted to stay inside the frame); the crop resized to 512x512 (bicubic); the box
mask resized (nearest) and box-blurred (a 128x128 kernel at 512) into a soft mask; after
inpainting, the crop is resized back and only the central ``s x s`` square is pasted.
diffusers binarises inpainting masks (its mask processor thresholds at 0.5), so the blur
reaches the model as a box with rounded corners, not as a soft mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthrel_lightning.synthesis.geometry import Box

__all__ = [
    "CropWindow",
    "context_window",
    "soft_box_mask",
    "crop_to_tensor",
    "paste_square",
    "snap_size",
    "to_uint8",
]


@dataclass(frozen=True)
class CropWindow:
    """A square context ``crop`` of a frame and the object ``box`` inside it (both in frame pixels)."""

    crop: Box
    box: Box

    @property
    def box_in_crop(self) -> Box:
        """The object box in crop pixels."""
        return self.box.shifted(-self.crop.x0, -self.crop.y0)


def context_window(box: Box | Any, frame_hw: tuple[int, int], context_scale: float = 1.5) -> CropWindow:
    """The context crop of side ``context_scale * side`` centred on the box, shifted to lie inside the frame."""
    box = Box.coerce(box)
    h, w = int(frame_hw[0]), int(frame_hw[1])
    if not box.fits(h, w):
        raise ValueError(f"box (x0={box.x0}, y0={box.y0}, side={box.side}) does not fit in a {w}x{h} frame")
    c = min(int(round(context_scale * box.side)), h, w)
    c = max(c, box.side)
    m = (c - box.side) // 2
    cx0 = int(np.clip(box.x0 - m, 0, w - c))
    cy0 = int(np.clip(box.y0 - m, 0, h - c))
    return CropWindow(Box(cx0, cy0, c), box.as_box())


def soft_box_mask(window: CropWindow, resolution: int = 512, blur_kernel: int = 128) -> torch.Tensor:
    """(1, R, R) float mask: the box at crop size, nearest-resized to R, box-blurred with a ``blur_kernel`` kernel."""
    c = window.crop.side
    hard = torch.zeros(1, 1, c, c)
    rows, cols = window.box_in_crop.slices
    hard[..., rows, cols] = 1.0
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
    c = window.crop.side
    crop = frame[window.crop.slices]
    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float().div_(255.0)
    if c != resolution:
        t = F.interpolate(
            t, size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=c > resolution
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
    c = window.crop.side
    if t.shape[-1] != c:
        t = F.interpolate(t, size=(c, c), mode="bicubic", align_corners=False, antialias=t.shape[-1] > c)
    rows, cols = window.box_in_crop.slices
    patch = to_uint8(t[0, :, rows, cols])
    out = frame.copy()
    out[window.box.slices] = patch
    return out, patch


def snap_size(height: int, width: int, max_side: int, multiple: int = 8) -> tuple[int, int]:
    """A (height, width) with the frame's aspect ratio, long side <= ``max_side``, both multiples of ``multiple``."""
    scale = min(1.0, max_side / max(height, width))
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w
