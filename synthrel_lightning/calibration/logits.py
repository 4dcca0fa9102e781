"""Logits for calibration: streamed from a model without gradients, and subsampled in a pixel reservoir."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LogitBatches = Iterable[tuple[Tensor, Tensor]]
"""Batches of ``(logits, target)``: (B,K,H,W) with (B,H,W), or (N,K) with (N,)."""


def as_batches(data: LogitBatches | tuple[Tensor, Tensor]) -> Iterable[tuple[Tensor, Tensor]]:
    """``data`` as an iterable of ``(logits, target)`` pairs (a single pair becomes a list of one)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(x, Tensor) for x in data):
        return [(data[0], data[1])]
    return data


class PixelReservoir:
    """A uniform random subsample (without replacement) of at most ``cap`` streamed pixels.

    Each pixel gets a random key; the ``cap`` smallest keys are kept, so memory stays
    bounded however long the stream and the result does not depend on batch sizes.
    """

    def __init__(self, cap: int, seed: int) -> None:
        if cap < 1:
            raise ValueError(f"max_pixels must be >= 1, got {cap!r}")
        self.cap = int(cap)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.keys: Tensor | None = None
        self.z: Tensor | None = None
        self.y: Tensor | None = None
        self.pixels = 0
        """Pixels offered so far (kept or not)."""

    def update(self, z: Tensor, y: Tensor) -> None:
        """Offer ``(N, K)`` logits and ``(N,)`` targets."""
        n = z.shape[0]
        if n == 0:
            return
        self.pixels += n
        keys = torch.rand(n, generator=self.generator, dtype=torch.float64).to(z.device)
        if self.keys is None:
            self.keys, self.z, self.y = keys[:0], z[:0], y[:0]
        assert self.z is not None and self.y is not None
        if self.keys.numel() >= self.cap:
            # Only pixels with a key below the current cap-th smallest can enter.
            take = keys < self.keys.max()
            keys, z, y = keys[take], z[take], y[take]
        keys = torch.cat([self.keys, keys])
        z = torch.cat([self.z, z])
        y = torch.cat([self.y, y])
        if keys.numel() > self.cap:
            idx = torch.topk(keys, self.cap, largest=False).indices
            keys, z, y = keys[idx], z[idx], y[idx]
        self.keys, self.z, self.y = keys, z, y


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _images_and_labels(batch: Any, index: int) -> tuple[Tensor, Tensor]:
    if isinstance(batch, dict):
        if "image" not in batch or "label" not in batch:
            raise KeyError(f"collect_logits: batch {index} lacks 'image' or 'label' (keys: {sorted(batch)})")
        return batch["image"], batch["label"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"collect_logits: batch {index} must be a dict with 'image'/'label' or an (image, label) pair")


def collect_logits(
    module: nn.Module,
    dataloader: Iterable[Any],
    max_batches: int | None = None,
    device: str | torch.device | None = None,
    to_cpu: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(unscaled logits (B,K,H,W), label (B,H,W))`` per batch, computed without gradients.

    Uses ``module.raw_logits(images)`` when the module has it (logits before any
    temperature), else ``module(images)``. Logits are resized bilinearly to the label
    size. The module is put in eval mode while iterating and restored afterwards.
    Nothing is kept between batches.
    """
    device = torch.device(device) if device is not None else _module_device(module)
    forward = getattr(module, "raw_logits", None) or module
    was_training = module.training
    module.eval()
    try:
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            images, labels = _images_and_labels(batch, i)
            with torch.no_grad():
                logits = forward(images.to(device))
            if isinstance(logits, dict):
                logits = logits["out"]
            labels = labels.to(logits.device)
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            logits = logits.float()
            if to_cpu:
                logits, labels = logits.cpu(), labels.cpu()
            yield logits, labels
    finally:
        module.train(was_training)


class LogitStream:
    """``collect_logits(module, dataloader, ...)`` as an iterable that runs the model again on each pass.

    A fit that needs a second pass (a grid extended beyond its edge) streams the same frames
    again instead of keeping their logits.
    """

    def __init__(self, module: nn.Module, dataloader: Iterable[Any], max_batches: int | None = None) -> None:
        self.module = module
        self.dataloader = dataloader
        self.max_batches = max_batches

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return collect_logits(self.module, self.dataloader, max_batches=self.max_batches)


__all__ = ["LogitBatches", "LogitStream", "PixelReservoir", "as_batches", "collect_logits"]
