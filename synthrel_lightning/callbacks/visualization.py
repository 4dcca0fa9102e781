"""Side-by-side validation panels (image | ground truth | prediction | OOD score) for any Lightning logger."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from synthrel_lightning.labels import NUM_CLASSES, OOD_ID, OOD_POSITIVE, TRAIN_ID_NAMES, VOID_ID, colorize_train_ids

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def denormalize(
    image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """(3,H,W) normalised float tensor -> (H,W,3) uint8 RGB."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    rgb = (image * s + m).clamp(0, 1).mul(255).round().byte()
    return rgb.permute(1, 2, 0).cpu().numpy()


def heatmap(score: Tensor, valid: Tensor | None = None, cmap: str = "inferno") -> np.ndarray:
    """(H,W) OOD score -> (H,W,3) uint8 colour map, min-max normalised over the frame (void pixels grey)."""
    from matplotlib import colormaps

    s = score.detach().float().cpu()
    finite = torch.isfinite(s)
    lo, hi = (s[finite].min().item(), s[finite].max().item()) if finite.any() else (0.0, 1.0)
    norm = ((s - lo) / (hi - lo if hi > lo else 1.0)).clamp(0, 1).nan_to_num(0.0).numpy()
    rgb = (colormaps[cmap](norm)[..., :3] * 255).round().astype(np.uint8)
    if valid is not None:
        rgb[~valid.cpu().numpy()] = 128
    return rgb


def ground_truth_map(label: Tensor | None, ood: Tensor | None) -> np.ndarray:
    """Train-id map with OOD pixels (from ``label`` 254 or ``ood`` == 1) set to 254, for colourising."""
    if label is None and ood is None:
        raise ValueError("OODVisualization: the batch has neither 'label' nor 'ood'")
    ref = label if label is not None else ood
    gt = label.cpu().numpy().astype(np.int64) if label is not None else np.full(tuple(ref.shape), VOID_ID, np.int64)
    if ood is not None:
        gt[ood.cpu().numpy() == OOD_POSITIVE] = OOD_ID
    return gt


def panel(image: np.ndarray, gt: np.ndarray, prediction: np.ndarray, score_rgb: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate image, coloured ground truth, coloured prediction and score heatmap horizontally."""
    parts = [
        image,
        colorize_train_ids(gt.clip(0, 255).astype(np.uint8)),
        colorize_train_ids(prediction.astype(np.uint8)),
        score_rgb,
    ]
    h = image.shape[0]
    sep = np.full((h, gap, 3), 255, np.uint8)
    out: list[np.ndarray] = []
    for i, p in enumerate(parts):
        if i:
            out.append(sep)
        out.append(p)
    return np.concatenate(out, axis=1)


class OODVisualization(Callback):
    """Logs, every ``every_n_epochs`` validations, one panel per sample: image | ground truth | prediction | OOD score.

    The first ``num_images`` samples of each validation set (``set_names`` restricts
    which sets; names come from the datamodule's ``val_set_names``) are re-run through
    ``pl_module(images)`` (temperature-scaled logits) and scored with ``pl_module.score``
    (or :func:`synthrel_lightning.scores.ood_score` with ``pl_module.ood_score``).
    TensorBoard gets ``add_image``; wandb gets ``wandb.Image`` with ground-truth and
    prediction mask overlays plus a table of the logged per-set metrics; other loggers
    (CSV) get PNG files under ``<log_dir>/images``. Ground truth: OOD white, void black.
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        set_names: list[str] | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        stage: str = "val",
    ) -> None:
        super().__init__()
        if num_images < 1:
            raise ValueError(f"OODVisualization: num_images must be >= 1, got {num_images}")
        if every_n_epochs < 1:
            raise ValueError(f"OODVisualization: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.set_names = list(set_names) if set_names is not None else None
        self.mean, self.std = tuple(mean), tuple(std)
        self.stage = stage
        self._samples: dict[str, list[dict[str, Any]]] = {}
        self.logged: list[str] = []

    # ------------------------------------------------------------------ helpers
    def _active(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.sanity_checking and trainer.is_global_zero and trainer.current_epoch % self.every_n_epochs == 0
        )

    @staticmethod
    def _set_name(trainer: L.Trainer, pl_module: L.LightningModule, stage: str, dataloader_idx: int) -> str:
        getter = getattr(pl_module, "_set_name", None)
        if callable(getter):
            return str(getter(stage, dataloader_idx))
        names = getattr(trainer.datamodule, f"{stage}_set_names", None) if trainer.datamodule is not None else None
        return str(names[dataloader_idx]) if names and dataloader_idx < len(names) else f"{stage}_{dataloader_idx}"

    @staticmethod
    def _score(pl_module: L.LightningModule, logits: Tensor) -> Tensor:
        scorer = getattr(pl_module, "score", None)
        if callable(scorer):
            return scorer(logits)
        name = getattr(pl_module, "ood_score", None) or getattr(pl_module.hparams, "ood_score", None)
        if name is None:
            raise AttributeError(
                f"OODVisualization: {type(pl_module).__name__} has neither a score(logits) method nor an ood_score name"
            )
        from synthrel_lightning.scores import ood_score

        return ood_score(name, logits)

    # -------------------------------------------------------------------- hooks
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Forget the previous epoch's samples."""
        self._samples = {}

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the first samples of each set with their prediction and OOD score."""
        if not self._active(trainer) or not isinstance(batch, Mapping) or "image" not in batch:
            return
        name = self._set_name(trainer, pl_module, self.stage, dataloader_idx)
        if self.set_names is not None and name not in self.set_names:
            return
        kept = self._samples.setdefault(name, [])
        need = self.num_images - len(kept)
        if need <= 0:
            return
        images = batch["image"][:need]
        with torch.no_grad():
            logits = pl_module(images)
            score = self._score(pl_module, logits)
        pred = logits.argmax(1)
        for i in range(images.shape[0]):
            label = batch["label"][i] if "label" in batch else None
            ood = batch["ood"][i] if "ood" in batch else None
            gt = ground_truth_map(label, ood)
            names = batch.get("name")
            kept.append(
                {
                    "image": denormalize(images[i].float(), self.mean, self.std),
                    "gt": gt,
                    "prediction": pred[i].cpu().numpy().astype(np.int64),
                    "score": heatmap(score[i], None if ood is None else ood.ne(VOID_ID)),
                    "name": str(names[i]) if names is not None else f"{batch_idx}_{i}",
                }
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Send the collected panels to the loggers (after the epoch's metrics are in ``callback_metrics``)."""
        if not self._active(trainer) or not self._samples:
            return
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        step = trainer.global_step
        epoch = trainer.current_epoch
        handled = False
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for set_name, samples in self._samples.items():
                    for i, s in enumerate(samples):
                        tag = f"{self.stage}/{set_name}/panel_{i}"
                        logger.experiment.add_image(
                            tag, panel(s["image"], s["gt"], s["prediction"], s["score"]), step, dataformats="HWC"
                        )
                        self.logged.append(f"tensorboard:{tag}")
                handled = True
            elif isinstance(logger, WandbLogger):
                self._log_wandb(trainer, logger)
                handled = True
        if not handled:
            root = (
                Path(trainer.loggers[0].log_dir)
                if trainer.loggers and getattr(trainer.loggers[0], "log_dir", None)
                else Path(trainer.default_root_dir)
            )
            from synthrel_lightning.plots import save_rgb_png

            for set_name, samples in self._samples.items():
                for i, s in enumerate(samples):
                    path = root / "images" / f"{self.stage}_{set_name}_epoch{epoch:03d}_{i}.png"
                    save_rgb_png(panel(s["image"], s["gt"], s["prediction"], s["score"]), path)
                    self.logged.append(str(path))

    def _log_wandb(self, trainer: L.Trainer, logger: Any) -> None:
        import wandb

        class_labels = {i: n for i, n in enumerate(TRAIN_ID_NAMES[:NUM_CLASSES])}
        class_labels.update({OOD_ID: "ood", VOID_ID: "void"})
        for set_name, samples in self._samples.items():
            images = []
            for s in samples:
                images.append(
                    wandb.Image(
                        panel(s["image"], s["gt"], s["prediction"], s["score"]),
                        caption=s["name"],
                    )
                )
                images.append(
                    wandb.Image(
                        s["image"],
                        caption=f"{s['name']} (overlays)",
                        masks={
                            "ground_truth": {"mask_data": s["gt"].astype(np.uint8), "class_labels": class_labels},
                            "prediction": {"mask_data": s["prediction"].astype(np.uint8), "class_labels": class_labels},
                        },
                    )
                )
            key = f"{self.stage}/{set_name}/panels"
            logger.experiment.log({key: images}, commit=False)
            self.logged.append(f"wandb:{key}")
        rows = []
        metrics = {k.split("/dataloader_idx_")[0]: v for k, v in trainer.callback_metrics.items()}
        for key, value in sorted(metrics.items()):
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == self.stage:
                rows.append([parts[1], parts[2], float(value)])
        if rows:
            logger.experiment.log(
                {f"{self.stage}/metrics_table": wandb.Table(columns=["set", "metric", "value"], data=rows)},
                commit=False,
            )
            self.logged.append(f"wandb:{self.stage}/metrics_table")
