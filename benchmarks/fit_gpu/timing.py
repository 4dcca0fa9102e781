"""Timing a fit: a callback stamping every step's start and end, and one timed fit of a model on a DataModule."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from synthrel_lightning.labels import OOD_ID

from .config import FitBenchConfig


def _describe(batch: Any) -> dict[str, Any]:
    """Shape, dtype and device of each tensor of a batch dict."""
    if not isinstance(batch, dict):
        return {"type": type(batch).__name__}
    return {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""), "device": v.device.type}
        for k, v in batch.items()
        if isinstance(v, torch.Tensor)
    }


class StepTimer(Callback):
    """Stamps the start and end of every training step (CUDA synchronised at the end of each)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.images: list[int] = []
        self.batch: dict[str, Any] = {}
        self._ood: torch.Tensor | None = None
        self._pixels = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Stamp the start (the previous end synchronised, so the device is idle here)."""
        if not self.starts:
            self.batch = _describe(batch)
        self.images.append(int(batch["image"].shape[0]))
        self.starts.append(time.perf_counter())

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the batch's OOD pixels (queued, no sync), wait for the device, then stamp the end."""
        label = batch.get("label") if isinstance(batch, dict) else None
        if isinstance(label, torch.Tensor):
            ood = (label == OOD_ID).sum()
            self._ood = ood if self._ood is None else self._ood + ood
            self._pixels += label.numel()
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.ends.append(time.perf_counter())

    def summary(self, warmup: int) -> dict[str, Any]:
        """images/s over the steps after ``warmup``, median step and wait times, the fraction of time waited.

        A timed step's cycle runs from the end of the step before it to its own end (the wait for
        its batch, then the step), so the timed span is ``warmup + 1 .. n`` whole cycles: with as many
        timed steps as a multiple of the loader's workers, batches arriving in waves (one per
        worker) do not bias the rate by where the span starts within a wave.
        """
        n = len(self.ends)
        if warmup < 1 or n <= warmup:
            raise RuntimeError(f"StepTimer: {n} steps ran; need at least 1 warm-up step ({warmup}) and a timed one")
        elapsed = self.ends[-1] - self.ends[warmup - 1]
        steps = [e - s for s, e in zip(self.starts[warmup:], self.ends[warmup:])]
        waits = [self.starts[i] - self.ends[i - 1] for i in range(warmup, n)]
        return {
            "images_per_s": sum(self.images[warmup:n]) / elapsed,
            "timed_steps": n - warmup,
            "elapsed_s": elapsed,
            "step_ms": 1000 * statistics.median(steps),
            "wait_ms": 1000 * statistics.median(waits),
            "max_wait_ms": 1000 * max(waits),
            "wait_fraction": sum(waits) / elapsed,
            "ood_pixel_fraction": float(self._ood) / self._pixels if self._ood is not None and self._pixels else None,
            "batch": self.batch,
        }


def fit_once(
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    config: FitBenchConfig,
    root: Path,
    steps: int | None = None,
) -> dict[str, Any]:
    """Fit ``warmup + steps`` steps (``config.steps`` by default) in a fresh Trainer; the :class:`StepTimer` summary."""
    steps = config.steps if steps is None else steps
    device = torch.device(config.device)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index] if device.type == "cuda" and device.index is not None else 1,
        precision=config.resolved_precision(),
        max_epochs=1,
        limit_train_batches=config.warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=20,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        default_root_dir=root,
    )
    trainer.fit(model, datamodule=datamodule)
    return timer.summary(config.warmup)


__all__ = ["StepTimer", "fit_once"]
