"""Writes predictions and OOD score maps of ``predict`` to disk, and says where at the end."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from synthrel_lightning.atomic import atomic_save_png, atomic_write
from synthrel_lightning.callbacks.visualization import denormalize
from synthrel_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from synthrel_lightning.labels import colorize_train_ids
from synthrel_lightning.paths import relative_path_within
from synthrel_lightning.runs import run_dir

log = logging.getLogger(__name__)


def score_heatmap(score: np.ndarray) -> np.ndarray:
    """An (H, W) score map as (H, W, 3) uint8 RGB in matplotlib's inferno map, scaled to its finite min..max."""
    from matplotlib import colormaps

    finite = np.isfinite(score)
    lo, hi = (float(score[finite].min()), float(score[finite].max())) if finite.any() else (0.0, 1.0)
    scaled = np.where(finite, (score - lo) / (hi - lo if hi > lo else 1.0), 0.0)
    return (colormaps["inferno"](scaled)[..., :3] * 255).round().astype(np.uint8)


class PredictionWriter(BasePredictionWriter):
    """For each predicted frame writes ``<name>_pred.png`` (train ids), ``<name>_pred_color.png``
    and ``<name>_score.npy`` (float32 OOD score map, higher = more OOD) under ``output_dir``,
    and with ``visuals`` ``<name>_heatmap.png`` (the score map in the inferno colour map, scaled
    to the frame's own minimum..maximum) and ``<name>_overlay.png`` (the heatmap blended 40 %
    over the frame, denormalised with ``mean``/``std``).

    A frame's name is a relative path (``street/b`` for ``street/b.jpg`` of a folder): its files
    mirror it (``street/b_score.npy``), so ``street/b`` and ``street_b`` never share a file; a
    name that could leave the output folder is refused (:func:`synthrel_lightning.paths.check_name`).
    Frames of a padded batch keep their own region (the top-left ``size`` of the batch).
    ``output_dir=None`` writes to ``<run folder>/predictions`` (:func:`synthrel_lightning.runs.run_dir`).
    Files are written atomically (an interrupted run leaves no partial file) with the mode the
    umask gives. At the end of ``predict`` it logs (INFO) the folder and how many frames and files
    it wrote, summed over processes; :attr:`written` holds the counts.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        color: bool = True,
        visuals: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.color = color
        self.visuals = visuals
        self.mean, self.std = tuple(mean), tuple(std)
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
        images = batch.get("image") if isinstance(batch, dict) and self.visuals else None
        sizes = batch.get("size") if isinstance(batch, dict) else None
        if sizes is None:
            sizes = [tuple(p.shape[-2:]) for p in preds]
        else:  # frames padded to a common size: keep each frame's own region
            sizes = [tuple(int(v) for v in hw) for hw in sizes.tolist()]
        for i, (name, pred, score) in enumerate(zip(names, preds, scores)):
            h, w = sizes[i]
            pred, score = pred[:h, :w].astype(np.uint8), score[:h, :w]

            def path(kind: str, suffix: str, name: str = str(name)) -> Path:
                return relative_path_within(out, name, f"_{kind}{suffix}", what="frame name")

            atomic_save_png(path("pred", ".png"), pred)
            files = 1
            if self.color:
                atomic_save_png(path("pred_color", ".png"), colorize_train_ids(pred))
                files += 1
            atomic_write(path("score", ".npy"), functools.partial(np.save, arr=score.astype(np.float32)))
            files += 1
            if self.visuals:
                heat = score_heatmap(score)
                atomic_save_png(path("heatmap", ".png"), heat)
                files += 1
                if images is not None and images.ndim == 4 and images.shape[1] == 3:
                    frame = denormalize(images[i, :, :h, :w].detach().float(), self.mean, self.std)
                    overlay = (0.6 * frame.astype(np.float32) + 0.4 * heat.astype(np.float32)).round()
                    atomic_save_png(path("overlay", ".png"), overlay.astype(np.uint8))
                    files += 1
            self.written["frames"] += 1
            self.written["files"] += files

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
