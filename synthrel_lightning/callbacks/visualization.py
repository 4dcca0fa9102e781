"""Labelled validation panels (image | ground truth | prediction | OOD score) for any Lightning logger.

The callback reads the :class:`~synthrel_lightning.evaluation_result.EvaluationResult` that the
module's ``validation_step`` (or ``test_step``) returns, so the model never runs twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from synthrel_lightning.evaluation_result import EvaluationResult
from synthrel_lightning.labels import NUM_CLASSES, OOD_ID, OOD_POSITIVE, TRAIN_ID_NAMES, VOID_ID, colorize_train_ids
from synthrel_lightning.paths import check_name, path_within

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
PANEL_TITLES: tuple[str, str, str, str] = ("image", "ground truth", "prediction", "OOD score")
"""Column titles of every panel row."""

_MAX_RANGE_PIXELS = 200_000
"""Score pixels kept per set and epoch to estimate its colour range (evenly subsampled beyond this)."""


def denormalize(
    image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """(3,H,W) normalised float tensor -> (H,W,3) uint8 RGB."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    rgb = (image * s + m).clamp(0, 1).mul(255).round().byte()
    return rgb.permute(1, 2, 0).cpu().numpy()


def ground_truth_map(label: Tensor | None, ood: Tensor | None) -> np.ndarray:
    """Train-id map with OOD pixels (from ``label`` 254 or ``ood`` == 1) set to 254, for colourising."""
    if label is not None:
        gt = label.cpu().numpy().astype(np.int64)
    elif ood is not None:
        gt = np.full(tuple(ood.shape), VOID_ID, np.int64)
    else:
        raise ValueError("OODVisualization: the evaluation result has neither 'label' nor 'ood'")
    if ood is not None:
        gt[ood.cpu().numpy() == OOD_POSITIVE] = OOD_ID
    return gt


def panel_figure(
    samples: Sequence[Mapping[str, Any]],
    score_range: tuple[float, float],
    title: str = "",
    cmap: str = "inferno",
    score_label: str = "OOD score (higher = more OOD)",
) -> Figure:
    """One row per sample: image | ground truth | prediction | OOD score, titled, with one colour bar.

    Each sample holds ``image`` (H,W,3 uint8), ``gt`` and ``prediction`` (H,W train ids; 254 OOD
    drawn white, 255 void black), ``score`` (H,W float) with ``valid`` (H,W bool; invalid pixels
    grey) and ``name``. Every score panel uses the same ``score_range``, shown on the colour bar.
    """
    from matplotlib import colormaps

    from synthrel_lightning.figures import new_figure

    lo, hi = float(score_range[0]), float(score_range[1])
    if not hi > lo:
        hi = lo + 1e-6
    h, w = samples[0]["image"].shape[:2]
    cell = 2.2
    fig = new_figure((4 * cell * w / h + 1.0, cell * len(samples) + (0.4 if title else 0.0)))
    axes = fig.subplots(len(samples), 4, squeeze=False)
    colours = colormaps[cmap].with_extremes(bad=(0.5, 0.5, 0.5))
    image_artist = None
    for row, s in enumerate(samples):
        score = np.ma.masked_array(np.asarray(s["score"], np.float32), mask=~np.asarray(s["valid"], bool))
        tiles = [
            s["image"],
            colorize_train_ids(np.asarray(s["gt"]).clip(0, 255).astype(np.uint8)),
            colorize_train_ids(np.asarray(s["prediction"]).astype(np.uint8)),
        ]
        for col, tile in enumerate(tiles):
            axes[row, col].imshow(tile, interpolation="nearest")
        image_artist = axes[row, 3].imshow(score, cmap=colours, vmin=lo, vmax=hi, interpolation="nearest")
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(PANEL_TITLES[col], fontsize=9)
        axes[row, 0].set_ylabel(str(s["name"]), fontsize=7)
    assert image_artist is not None  # one per sample, and samples[0] was read above
    fig.colorbar(image_artist, ax=axes[:, 3].tolist(), label=score_label, shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


class OODVisualization(Callback):
    """Logs labelled panels of the first ``num_images`` frames of each evaluation set every ``every_n_epochs``.

    Reads the :class:`~synthrel_lightning.evaluation_result.EvaluationResult` returned by the
    module's ``validation_step`` (``stage="val"``) or ``test_step`` (``stage="test"``); ``set_names``
    restricts which sets. Each set gets one figure (:func:`panel_figure`): a row per frame with
    titled columns and one colour bar. The OOD score's colour range is fixed per set, never
    rescaled per frame: ``score_range`` (one ``(low, high)`` for all sets, or a mapping set name ->
    range), else the ``range_quantiles`` of the set's valid score pixels over the whole epoch.
    :attr:`ranges` holds the ranges used.

    Outputs: figures in ``formats`` (PNG beside SVG/PDF, through
    :func:`synthrel_lightning.figures.save_figure`) under ``<run folder>/images``; TensorBoard
    gets ``add_image``; wandb gets the figure, ground-truth/prediction mask overlays and a table
    of the logged per-set metrics. ``formats=()`` writes no files.
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        set_names: list[str] | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        stage: str = "val",
        score_range: tuple[float, float] | dict[str, tuple[float, float]] | None = None,
        range_quantiles: tuple[float, float] = (0.01, 0.99),
        formats: tuple[str, ...] = ("png", "svg", "pdf"),
        cmap: str = "inferno",
    ) -> None:
        super().__init__()
        if num_images < 1:
            raise ValueError(f"OODVisualization: num_images must be >= 1, got {num_images}")
        if every_n_epochs < 1:
            raise ValueError(f"OODVisualization: every_n_epochs must be >= 1, got {every_n_epochs}")
        if stage not in ("val", "test"):
            raise ValueError(f"OODVisualization: stage must be 'val' or 'test', got {stage!r}")
        lo_q, hi_q = range_quantiles
        if not 0.0 <= lo_q < hi_q <= 1.0:
            raise ValueError(
                f"OODVisualization: range_quantiles must satisfy 0 <= low < high <= 1, got {range_quantiles}"
            )
        ranges = score_range.values() if isinstance(score_range, Mapping) else [score_range] if score_range else []
        for r in ranges:
            if len(r) != 2 or not float(r[1]) > float(r[0]):
                raise ValueError(f"OODVisualization: a score_range must be (low, high) with high > low, got {r}")
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.set_names = list(set_names) if set_names is not None else None
        self.mean, self.std = tuple(mean), tuple(std)
        self.stage = stage
        self._set_what = f"{'validation' if stage == 'val' else stage} set name"
        self.score_range = score_range
        self.range_quantiles = (float(lo_q), float(hi_q))
        self.formats = tuple(formats)
        self.cmap = cmap
        self._samples: dict[str, list[dict[str, Any]]] = {}
        self._pixels: dict[str, list[np.ndarray]] = {}
        self.ranges: dict[str, tuple[float, float]] = {}
        self.logged: list[str] = []

    # ------------------------------------------------------------------ helpers
    def _active(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.sanity_checking and trainer.is_global_zero and trainer.current_epoch % self.every_n_epochs == 0
        )

    def _fixed_range(self, set_name: str) -> tuple[float, float] | None:
        if isinstance(self.score_range, Mapping):
            r = self.score_range.get(set_name)
        else:
            r = self.score_range
        return (float(r[0]), float(r[1])) if r is not None else None

    def _range(self, set_name: str) -> tuple[float, float]:
        fixed = self._fixed_range(set_name)
        if fixed is not None:
            return fixed
        pixels = np.concatenate(self._pixels.get(set_name) or [np.zeros(1, np.float32)])
        lo, hi = np.quantile(pixels, self.range_quantiles)
        return float(lo), float(hi) if hi > lo else float(lo) + 1e-6

    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any) -> None:
        if not self._active(trainer):
            return
        if not isinstance(outputs, EvaluationResult):
            raise TypeError(
                f"OODVisualization reads the EvaluationResult returned by {self.stage}_step "
                f"(synthrel_lightning.evaluation_result); {type(pl_module).__name__}.{self.stage}_step "
                f"returned {type(outputs).__name__}"
            )
        name = outputs.set_name
        if self.set_names is not None and name not in self.set_names:
            return
        # The set name becomes part of a file name: refuse one that could leave the run folder, now.
        check_name(name, what=self._set_what)
        score = outputs.score.detach().float()
        valid = torch.isfinite(score)
        if outputs.ood is not None:
            valid &= outputs.ood.ne(VOID_ID)
        if self._fixed_range(name) is None:
            values = score[valid].cpu().numpy()
            step = max(1, values.size // 20_000)
            kept = self._pixels.setdefault(name, [])
            if sum(v.size for v in kept) < _MAX_RANGE_PIXELS:
                kept.append(values[::step])
        samples = self._samples.setdefault(name, [])
        need = min(self.num_images - len(samples), outputs.images.shape[0])
        prediction = outputs.logits[:need].argmax(1).cpu().numpy().astype(np.int64)
        for i in range(max(need, 0)):
            label = outputs.label[i] if outputs.label is not None else None
            ood = outputs.ood[i] if outputs.ood is not None else None
            samples.append(
                {
                    "image": denormalize(outputs.images[i].detach().float(), self.mean, self.std),
                    "gt": ground_truth_map(label, ood),
                    "prediction": prediction[i],
                    "score": score[i].cpu().numpy(),
                    "valid": valid[i].cpu().numpy(),
                    "name": outputs.names[i] if outputs.names else f"{outputs.batch_idx}_{i}",
                }
            )

    # -------------------------------------------------------------------- hooks
    def _start(self) -> None:
        self._samples, self._pixels = {}, {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Forget the previous epoch's samples."""
        self._start()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Forget the previous run's samples."""
        self._start()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the first frames of each set and the set's score pixels (for its colour range)."""
        if self.stage == "val":
            self._collect(trainer, pl_module, outputs)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """As :meth:`on_validation_batch_end`, for ``stage="test"``."""
        if self.stage == "test":
            self._collect(trainer, pl_module, outputs)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Send the panels to the loggers (after the epoch's metrics are in ``callback_metrics``)."""
        if self.stage == "val":
            self._emit(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Send the panels to the loggers."""
        if self.stage == "test":
            self._emit(trainer, pl_module)

    def _emit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer) or not self._samples:
            return
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        from synthrel_lightning.figures import figure_to_array, save_figure
        from synthrel_lightning.runs import run_dir

        step, epoch = trainer.global_step, trainer.current_epoch
        score_name = getattr(pl_module, "ood_score", None)
        score_name = score_name if isinstance(score_name, str) else type(score_name).__name__
        rendered: dict[str, np.ndarray] = {}
        for set_name, samples in self._samples.items():
            self.ranges[set_name] = self._range(set_name)
            lo, hi = self.ranges[set_name]
            fig = panel_figure(
                samples,
                self.ranges[set_name],
                title=f"{self.stage}/{set_name}, epoch {epoch}: OOD score {score_name} in [{lo:.3g}, {hi:.3g}]",
                cmap=self.cmap,
                score_label=f"OOD score ({score_name}; higher = more OOD)",
            )
            rendered[set_name] = figure_to_array(fig)
            if self.formats:
                file_name = f"{self.stage}_{set_name}_epoch{epoch:03d}.{self.formats[0]}"
                path = path_within(run_dir(trainer) / "images", file_name, what=self._set_what)
                self.logged += [str(p) for p in save_figure(fig, path, formats=self.formats)]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for set_name, array in rendered.items():
                    tag = f"{self.stage}/{set_name}/panels"
                    logger.experiment.add_image(tag, array, step, dataformats="HWC")
                    self.logged.append(f"tensorboard:{tag}")
            elif isinstance(logger, WandbLogger):
                self._log_wandb(trainer, logger, rendered)

    def _log_wandb(self, trainer: L.Trainer, logger: Any, rendered: dict[str, np.ndarray]) -> None:
        import wandb

        class_labels = {i: n for i, n in enumerate(TRAIN_ID_NAMES[:NUM_CLASSES])}
        class_labels.update({OOD_ID: "ood", VOID_ID: "void"})
        for set_name, samples in self._samples.items():
            lo, hi = self.ranges[set_name]
            images = [wandb.Image(rendered[set_name], caption=f"{set_name}: OOD score range [{lo:.3g}, {hi:.3g}]")]
            for s in samples:
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
