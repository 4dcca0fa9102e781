"""Collating samples of possibly different sizes into one :class:`~synthrel_lightning.data.sample.Batch`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from synthrel_lightning.data.sample import Batch, Sample
from synthrel_lightning.labels import VOID_ID

__all__ = ["collate_samples"]

_PAD = {"image": 0, "label": VOID_ID, "ood": VOID_ID}
"""Padding values: the normalised mean colour (0) for images, void for the masks."""


def _pad_stack(tensors: Sequence[torch.Tensor], height: int, width: int, value: float) -> torch.Tensor:
    out = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], height, width), value)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-2], : t.shape[-1]] = t
    return out


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Stack transformed samples; frames of different sizes are padded bottom/right (image 0, masks void 255).

    ``size`` holds each frame's own (height, width), so ``image[i, :, :h, :w]`` is frame ``i``;
    padded pixels are void in ``label`` and ``ood`` and so count in no metric (uint8 images,
    normalised later on the device, are padded with 0 too).
    """
    if not samples:
        raise ValueError("collate_samples: no samples to collate")
    for s in samples:
        if not isinstance(s.get("image"), torch.Tensor):
            raise TypeError(
                f"collate_samples: sample {s.get('name')!r} holds a {type(s.get('image')).__name__} image; "
                "expected a (3, H, W) tensor (apply a transform such as eval_transform() first)"
            )
    sizes = torch.tensor([list(s["image"].shape[-2:]) for s in samples], dtype=torch.int64)
    height, width = (int(v) for v in sizes.max(dim=0).values)
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]  # type: ignore[literal-required]
        if key in _PAD and all(isinstance(v, torch.Tensor) for v in values):
            batch[key] = _pad_stack(values, height, width, _PAD[key])
        elif key == "name":
            batch[key] = [str(v) for v in values]
        else:
            batch[key] = default_collate(values)
    batch["size"] = sizes
    return batch  # type: ignore[return-value]
