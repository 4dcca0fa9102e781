"""Per-frame pixel samples for calibration: at most N labelled pixels per frame, seeded by (seed, frame index).

Loiseau et al.'s calibration code (https://github.com/valeoai/GenVal, ``relis/extract_logits.py``)
keeps 20,000 random pixels of every image (drawn among all its pixels; void ones are
dropped afterwards). Here the draw is uniform without replacement among the frame's
labelled (train-id) pixels, so every frame contributes ``min(N, labelled pixels)`` pixels.
Frame ``i`` of the stream (counted from 0 across batches) draws from a generator seeded
with ``(seed, i)``: the sample depends neither on the batch size nor on loader workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from synthrel_lightning.labels import OOD_ID, VOID_ID

PixelsPerImage = int | Literal["all"]
"""Pixels kept per frame: a count, or ``"all"`` labelled pixels."""

DEFAULT_PIXELS_PER_IMAGE = 20_000
"""The authors' per-image sample size."""


@dataclass(frozen=True)
class FramePixels:
    """The sampled pixels of one frame: ``(n, K)`` float32 logits, ``(n,)`` targets, and how many were labelled."""

    logits: Tensor
    target: Tensor
    labelled: int
    index: int


def labelled_pixels(targets: Tensor, num_classes: int, where: str) -> Tensor:
    """Pixels with a class label (0..K-1); a ValueError naming ``where`` for values other than those, OOD, void."""
    valid = (targets >= 0) & (targets < num_classes)
    bad = ~valid & (targets != VOID_ID) & (targets != OOD_ID)
    if bool(bad.any()):
        raise ValueError(
            f"{where}: target holds values {sorted(targets[bad].unique().tolist())[:10]} outside "
            f"0..{num_classes - 1}, {OOD_ID} (OOD) and {VOID_ID} (void)"
        )
    return valid


def check_pixels_per_image(value: PixelsPerImage, who: str = "fit_temperature") -> int | None:
    """The per-frame cap as an int, or ``None`` for ``"all"``; anything else is an error naming the value."""
    if value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{who}: pixels_per_image must be a positive int or 'all', got {value!r}")
    return int(value)


def frame_generator(seed: int, index: int) -> np.random.Generator:
    """The random generator of frame ``index`` under ``seed`` (independent streams per frame)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & (2**63 - 1), int(index)])))


def sample_positions(labelled: Tensor, cap: int | None, seed: int, index: int) -> Tensor:
    """Ascending positions of at most ``cap`` ``True`` entries of 1-D ``labelled``, uniformly without replacement."""
    positions = labelled.nonzero().squeeze(1)
    n = positions.numel()
    if cap is None or n <= cap:
        return positions
    pick = np.sort(frame_generator(seed, index).choice(n, size=cap, replace=False))
    return positions[torch.from_numpy(pick).to(positions.device)]


def _frames_of(logits: Tensor, target: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """``(F, K, N)`` logits and ``(F, N)`` targets (views) of a batch, after shape and dtype checks."""
    where = f"calibration batch {batch}"
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"{where}: expected a (logits, target) pair of tensors, "
            f"got {type(logits).__name__}, {type(target).__name__}"
        )
    if logits.ndim == 4 and target.ndim == 3 and target.shape == (logits.shape[0], *logits.shape[2:]):
        frames = logits.reshape(logits.shape[0], logits.shape[1], -1)
        targets = target.reshape(target.shape[0], -1)
    elif logits.ndim == 2 and target.ndim == 1 and target.shape[0] == logits.shape[0]:
        frames, targets = logits.t().unsqueeze(0), target.unsqueeze(0)
    else:
        raise ValueError(
            f"{where}: logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match; "
            "expected (B,K,H,W) with (B,H,W), or (N,K) with (N,)"
        )
    if target.dtype.is_floating_point:
        raise TypeError(f"{where}: target must hold integer train ids, got {target.dtype}")
    return frames, targets.to(frames.device).long()


def frame_pixels(
    batches: Iterable[tuple[Tensor, Tensor]], pixels_per_image: PixelsPerImage = DEFAULT_PIXELS_PER_IMAGE, seed: int = 0
) -> Iterator[FramePixels]:
    """The labelled pixels of every frame of ``(logits, target)`` batches, sampled per frame.

    A ``(B,K,H,W)`` batch holds B frames; an ``(N,K)`` batch is one frame. Void (255) and
    OOD (254) pixels are left out; other targets outside ``0..K-1``, a change of K between
    batches, and non-finite logits at sampled pixels are errors naming the batch.
    """
    cap = check_pixels_per_image(pixels_per_image)
    num_classes: int | None = None
    index = 0
    for b, (logits, target) in enumerate(batches):
        frames, targets = _frames_of(logits, target, b)
        k = frames.shape[1]
        where = f"calibration batch {b}"
        if num_classes is not None and k != num_classes:
            raise ValueError(f"{where}: {k} classes, but earlier batches had {num_classes}")
        num_classes = k
        valid = labelled_pixels(targets, k, where)
        for f in range(frames.shape[0]):
            positions = sample_positions(valid[f], cap, seed, index)
            z = frames[f].index_select(1, positions).t().float().contiguous()
            if z.numel():
                n_bad = int((~torch.isfinite(z)).sum())
                if n_bad:
                    raise ValueError(
                        f"{where}, frame {f}: {n_bad} of {z.numel()} logits at labelled pixels are NaN or infinite; "
                        "check the model's output (e.g. compute in float32)"
                    )
            yield FramePixels(z, targets[f, positions], int(valid[f].sum()), index)
            index += 1


__all__ = [
    "DEFAULT_PIXELS_PER_IMAGE",
    "FramePixels",
    "PixelsPerImage",
    "check_pixels_per_image",
    "frame_generator",
    "frame_pixels",
    "sample_positions",
]
