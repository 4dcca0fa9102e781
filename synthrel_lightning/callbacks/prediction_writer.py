"""Writes predictions and OOD score maps of ``predict`` to disk, and says where at the end."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from synthrel_lightning.atomic import atomic_save_png, atomic_write
from synthrel_lightning.labels import colorize_train_ids
from synthrel_lightning.runs import run_dir

log = logging.getLogger(__name__)


class PredictionWriter(BasePredictionWriter):
    """For each predicted frame writes ``<name>_pred.png`` (train ids), ``<name>_pred_color.png``
    and ``<name>_score.npy`` (float32 OOD score map, higher = more OOD) under ``output_dir``.

    ``output_dir=None`` writes to ``<run folder>/predictions`` (:func:`synthrel_lightning.runs.run_dir`).
    Files are written atomically (an interrupted run leaves no partial file) with the mode the
    umask gives. At the end of ``predict`` it logs (INFO) the folder and how many frames and files
    it wrote, summed over processes; :attr:`written` holds the counts.
    """

    def __init__(self, output_dir: str | None = None, color: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.color = color
        self.directory: Path | None = None
        self.written: dict[str, int] = {"frames": 0, "files": 0}

    def _resolve(self, trainer: L.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return run_dir(trainer) / "predictions"

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Decide the output folder once (on rank zero, shared with the other processes)."""
        path = str(self._resolve(trainer)) if trainer.is_global_zero else ""
        self.directory = Path(trainer.strategy.broadcast(path))
        self.written = {"frames": 0, "files": 0}

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Write one batch's maps."""
        if not isinstance(prediction, dict) or "score" not in prediction:
            return
        out = self.directory if self.directory is not None else self._resolve(trainer)
        preds = prediction["prediction"].cpu().numpy()
        scores = prediction["score"].float().cpu().numpy()
        names = prediction.get("name") or [f"frame_{batch_idx:06d}_{i}" for i in range(len(preds))]
        sizes = batch.get("size") if isinstance(batch, dict) else None
        if sizes is not None:  # frames padded to a common size: keep each frame's own region
            sizes = sizes.tolist()
            preds = [p[:h, :w] for p, (h, w) in zip(preds, sizes)]
            scores = [s[:h, :w] for s, (h, w) in zip(scores, sizes)]
        for name, pred, score in zip(names, preds, scores):
            stem = str(name).replace("/", "_")
            pred = pred.astype(np.uint8)
            atomic_save_png(out / f"{stem}_pred.png", pred)
            if self.color:
                atomic_save_png(out / f"{stem}_pred_color.png", colorize_train_ids(pred))
            atomic_write(out / f"{stem}_score.npy", functools.partial(np.save, arr=score.astype(np.float32)))
            self.written["frames"] += 1
            self.written["files"] += 3 if self.color else 2

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Report the folder and the number of frames and files written (all processes)."""
        counts = torch.tensor([self.written["frames"], self.written["files"]], dtype=torch.float64)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        frames, files = (int(v) for v in counts.tolist())
        self.written = {"frames": frames, "files": files}
        if trainer.is_global_zero:
            log.info(
                "predict: wrote %d files (%d frames: predictions, score maps) to %s", files, frames, self.directory
            )
