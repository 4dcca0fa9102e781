"""Writes predictions and OOD score maps of ``predict`` to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from synthrel_lightning.atomic import atomic_save_png, atomic_write
from synthrel_lightning.labels import colorize_train_ids


class PredictionWriter(BasePredictionWriter):
    """For each predicted frame writes ``<name>_pred.png`` (train ids), ``<name>_pred_color.png``
    and ``<name>_score.npy`` (float32 OOD score map, higher = more OOD) under ``output_dir``.

    ``output_dir=None`` writes to ``<trainer.log_dir>/predictions``. Frames already written
    are overwritten atomically, so an interrupted run leaves no partial file.
    """

    def __init__(self, output_dir: str | None = None, color: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.color = color

    def _directory(self, trainer: L.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    def write_on_batch_end(  # type: ignore[override]
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
        out = self._directory(trainer)
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
            atomic_write(out / f"{stem}_score.npy", lambda tmp, a=score: np.save(tmp, a.astype(np.float32)))
