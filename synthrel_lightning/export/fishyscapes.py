"""Fishyscapes: the benchmark evaluates an estimator function, not files.

Fishyscapes (github.com/hermannsblum/bdl-benchmark, ``bdlb/fishyscapes/benchmark.py``) runs
``estimator(batch['image_left']).numpy()`` on every frame — an (H, W, 3) uint8 RGB image —
and expects an (H, W) uncertainty map, higher = more anomalous; the online benchmark runs
the same function on its hidden frames. :class:`FishyscapesEstimator` is that function for a
trained :class:`~synthrel_lightning.models.OODSegmenter`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["FishyscapesEstimator"]


class FishyscapesEstimator:
    """``estimator(image) -> score``: an (H, W, 3) uint8 image (NumPy, torch or anything with ``.numpy()``)
    to the model's (H, W) float32 OOD score on the CPU (a tensor, so ``.numpy()`` works as the benchmark calls it).

    The image goes through ``transform`` (default: :func:`~synthrel_lightning.data.transforms.eval_transform`,
    ImageNet normalisation) and ``model`` (anything whose ``score(model(images))`` gives (B, H, W) scores,
    as :class:`~synthrel_lightning.models.OODSegmenter` does); scores at another size are resized bilinearly.
    """

    def __init__(self, model: nn.Module, transform: Any | None = None, device: str | torch.device = "cpu") -> None:
        from synthrel_lightning.data.transforms import eval_transform

        score = getattr(model, "score", None)
        if not callable(score):
            raise TypeError(
                f"FishyscapesEstimator: {type(model).__name__} has no score(outputs) method; expected an OODSegmenter"
            )
        self._score: Callable[[Any], Tensor] = score
        self.model = model.eval().to(device)
        self.transform = transform if transform is not None else eval_transform()
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, image: Any) -> Tensor:
        arr = image.numpy() if hasattr(image, "numpy") and not isinstance(image, np.ndarray) else np.asarray(image)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"FishyscapesEstimator: expected an (H, W, 3) RGB image, got shape {arr.shape}")
        sample = self.transform({"image": np.ascontiguousarray(arr.astype(np.uint8)), "name": "frame"})
        images = sample["image"][None].to(self.device)
        score = self._score(self.model(images))
        if score.shape[-2:] != arr.shape[:2]:
            score = torch.nn.functional.interpolate(score[:, None].float(), size=arr.shape[:2], mode="bilinear")[:, 0]
        return score[0].float().cpu()
