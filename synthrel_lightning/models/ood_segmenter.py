"""The OOD segmenter: any segmenter + composable loss terms + OOD score + streaming metrics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from synthrel_lightning.labels import NUM_CLASSES, TRAIN_ID_NAMES, VOID_ID
from synthrel_lightning.losses import CrossEntropy, LossTerm

log = logging.getLogger(__name__)


def _built_from_config() -> bool:
    """True while LightningCLI (or its checkpoint instantiator) constructs the module from a config."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - other Lightning versions
        return False
    return _given_hyperparameters.get() is not None


class OODSegmenter(L.LightningModule):
    """Semantic segmenter trained for reliability: in-distribution accuracy, OOD detection, calibration.

    Args:
        segmenter: any module mapping images (B,3,H,W) to logits (B,K,h,w); logits are
            upsampled (bilinear) to the label size. See :mod:`synthrel_lightning.models.segmenters`.
        num_classes: K, the number of in-distribution classes.
        losses: weighted loss terms summed into the objective (default: cross-entropy).
        loss_weights: weights by term name (e.g. ``{"energy_hinge": 0.2}``) overriding the
            terms' own; flat keys such as ``--model.init_args.loss_weights.energy_hinge=0.2``
            make them reachable from sweeps.
        ood_score: name of the OOD score used in evaluation and prediction
            (see :data:`synthrel_lightning.scores.SCORE_NAMES`).
        optimizer: optimizer factory (LightningCLI: ``class_path``/``init_args``).
        scheduler: optional learning-rate scheduler factory.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        ood_metric_mode: ``"binned"`` (constant memory) or ``"exact"`` pixel OOD metrics.
        calibration_bins: bins of the top-1 ECE.
        val_set_names / test_set_names: names of the evaluation dataloaders, used in
            logged keys ``val/<name>/<metric>``; by default taken from the datamodule
            (``val_set_names``/``test_set_names``), else ``val_0``, ``val_1``...
        class_names: names of the K classes (for per-class IoU keys).
        summary: write ``metrics_summary.{json,md}`` after fit/validate/test.
        prediction_dir: where ``predict`` writes prediction and score maps
            (default ``<log_dir>/predictions``).
        compile_losses: compile the summed loss terms with ``torch.compile`` (CUDA only;
            elsewhere the eager path runs). Compilation takes a while on the first steps.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        num_classes: int = NUM_CLASSES,
        losses: list[LossTerm] | None = None,
        loss_weights: dict[str, float] | None = None,
        ood_score: str = "energy",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        ood_metric_mode: str = "binned",
        calibration_bins: int = 15,
        val_set_names: list[str] | None = None,
        test_set_names: list[str] | None = None,
        class_names: list[str] | None = None,
        summary: bool = True,
        prediction_dir: str | None = None,
        compile_losses: bool = False,
    ) -> None:
        super().__init__()
        from synthrel_lightning.scores import build_scorer

        if _built_from_config():
            # LightningCLI hands over the configuration (plain data) as hyperparameters: keep
            # all of it, so load_from_checkpoint can rebuild the segmenter and loss terms.
            self.save_hyperparameters()
        else:
            self.save_hyperparameters(ignore=["segmenter", "losses", "optimizer", "scheduler"])
        self.segmenter = segmenter
        self.num_classes = int(num_classes)
        self.losses = nn.ModuleList(losses if losses is not None else [CrossEntropy()])
        if len(self.losses) == 0:
            raise ValueError("OODSegmenter: losses must hold at least one LossTerm")
        for term in self.losses:
            if not isinstance(term, LossTerm):
                raise TypeError(f"OODSegmenter: losses must be LossTerm instances, got {type(term).__name__}")
        if loss_weights:
            by_name = {term.name: term for term in self.losses}
            unknown = sorted(set(loss_weights) - set(by_name))
            if unknown:
                raise ValueError(
                    f"OODSegmenter: loss_weights names {unknown} match no loss term; terms: {sorted(by_name)}"
                )
            for term_name, w in loss_weights.items():
                if not w >= 0:
                    raise ValueError(f"OODSegmenter: loss weight {term_name}={w!r} must be >= 0")
                by_name[term_name].weight = float(w)
        self.ood_score = ood_score
        self.scorer = build_scorer(ood_score)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.scheduler_interval = scheduler_interval
        self.ood_metric_mode = ood_metric_mode
        self.calibration_bins = calibration_bins
        self.set_names: dict[str, list[str] | None] = {"val": val_set_names, "test": test_set_names}
        self.class_names = (
            list(class_names)
            if class_names is not None
            else (
                list(TRAIN_ID_NAMES)
                if self.num_classes == NUM_CLASSES
                else [f"class_{i}" for i in range(self.num_classes)]
            )
        )
        self.summary = summary
        self.prediction_dir = prediction_dir
        self.compile_losses = bool(compile_losses)
        self._compiled_terms: Any = None
        self.register_buffer("temperature", torch.ones(()))
        # Evaluation metrics per (stage, set name), created on first use.
        self.eval_metrics = nn.ModuleDict()
        self._seen: dict[str, dict[str, bool]] = {}
        self._reported_skips: set[str] = set()
        self._score_statistics_pending = False
        # Set by ReliabilityPlots: keep each set's reliability diagram and ROC/PR figures
        # (built from the metric states of all processes) for loggers to pick up.
        self.keep_evaluation_plots = False
        self.evaluation_plots: dict[str, dict[str, Any]] = {}

    # ----------------------------------------------------------------- inference
    def raw_logits(self, images: Tensor) -> Tensor:
        """Logits (B,K,H,W) at the input resolution, before temperature scaling."""
        logits = self.segmenter(images)
        if isinstance(logits, dict):  # e.g. torchvision segmentation models
            logits = logits["out"]
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"OODSegmenter: the segmenter returned shape {tuple(logits.shape)}; expected (B, {self.num_classes}, h, w)"
            )
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def forward(self, images: Tensor) -> Tensor:
        """Temperature-scaled logits (B,K,H,W) at the input resolution."""
        return self.raw_logits(images) / self.temperature

    def set_ood_score(self, name: str) -> None:
        """Switch the OOD score used by evaluation and prediction (e.g. to compare scores on one model)."""
        from synthrel_lightning.scores import build_scorer

        self.scorer = build_scorer(name).to(self.device)
        self.ood_score = name
        self.hparams["ood_score"] = name

    def score(self, logits: Tensor) -> Tensor:
        """OOD score map (B,H,W) of temperature-scaled logits; higher = more OOD."""
        if hasattr(self.scorer, "update_statistics"):
            # Statistics-based scores (standardized max-logit) were fitted on raw training
            # logits: score the raw logits, which also makes them independent of T.
            logits = logits * self.temperature
        return self.scorer(logits)

    # ------------------------------------------------------------------ training
    def compute_losses(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The weighted total (``loss``) and each unweighted term (``loss_<name>``).

        With several terms, the per-pixel statistics they read (logsumexp, max, sigmoid
        sums, masks) are computed once for all of them, and the target is checked once,
        after the whole objective is queued (see :func:`synthrel_lightning.losses.evaluate_terms`).
        """
        from synthrel_lightning.losses import check_target_values, evaluate_terms

        terms = list(self.losses)
        if len(terms) > 1 and any(term.supports_stats for term in terms):
            if self.compile_losses and logits.is_cuda:
                if self._compiled_terms is None:
                    # Plain ops (fused=False) let the compiler fuse the statistics and the terms itself.
                    self._compiled_terms = torch.compile(evaluate_terms)
                values, valid = self._compiled_terms(terms, logits, target, "OODSegmenter", fused=False)
            else:
                values, valid = evaluate_terms(terms, logits, target, "OODSegmenter")
            if not bool(valid):
                check_target_values(logits, target, "OODSegmenter")
        else:
            values = [term(logits, target) for term in terms]
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        for term, value in zip(terms, values):
            key = f"loss_{term.name}"
            while key in parts:
                key += "_"
            parts[key] = value
            # One fused multiply-add per term keeps the kernel count of the sum low.
            total = value * term.weight if total is None else torch.add(total, value, alpha=term.weight)
        parts["loss"] = total
        return parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One optimisation step on a batch dict with ``image`` and ``label``."""
        images, target = batch["image"], batch["label"]
        logits = self.raw_logits(images)
        parts = self.compute_losses(logits, target)
        if not torch.isfinite(parts["loss"]):
            raise FloatingPointError(
                f"OODSegmenter: non-finite training loss at step {self.global_step}: "
                + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            )
        bs = images.shape[0]
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=bs)
        for key, value in parts.items():
            if key != "loss":
                self.log(f"train/{key}", value, batch_size=bs)
        if hasattr(self.scorer, "update_statistics"):
            self.scorer.update_statistics(logits.detach(), target)
            self._score_statistics_pending = True
        return parts["loss"]

    def on_train_epoch_start(self) -> None:
        """Start fresh training-data statistics of stateful OOD scores (this epoch's weights only)."""
        if hasattr(self.scorer, "reset_statistics"):
            self.scorer.reset_statistics()
            self._score_statistics_pending = False

    def _finalize_score_statistics(self) -> None:
        # Validation runs before on_train_epoch_end, so statistics gathered so far are
        # finalised whenever evaluation starts, and again at the end of the epoch.
        if self._score_statistics_pending and hasattr(self.scorer, "finalize"):
            self.scorer.finalize()
            self._score_statistics_pending = False

    def on_validation_epoch_start(self) -> None:
        """Finalise pending training-data statistics of stateful OOD scores."""
        self._finalize_score_statistics()

    def on_train_epoch_end(self) -> None:
        """Finalise training-data statistics of stateful OOD scores (standardized max-logit)."""
        self._finalize_score_statistics()

    # ---------------------------------------------------------------- evaluation
    def _set_name(self, stage: str, dataloader_idx: int) -> str:
        names = self.set_names.get(stage)
        if names is None and self._trainer is not None and self.trainer.datamodule is not None:
            names = getattr(self.trainer.datamodule, f"{stage}_set_names", None)
        if names is not None and dataloader_idx < len(names):
            return str(names[dataloader_idx])
        return f"{stage}_{dataloader_idx}"

    def _metrics_for(self, stage: str, name: str) -> nn.ModuleDict:
        key = f"{stage}__{name}"
        if key not in self.eval_metrics:
            from synthrel_lightning.metrics import CalibrationMetrics, PixelOODMetrics, SegmentationIoU

            self.eval_metrics[key] = nn.ModuleDict(
                {
                    "seg": SegmentationIoU(num_classes=self.num_classes, class_names=self.class_names),
                    "ood": PixelOODMetrics(mode=self.ood_metric_mode),
                    "cal": CalibrationMetrics(num_bins=self.calibration_bins),
                }
            ).to(self.device)
            self._seen[key] = {"seg": False, "ood": False}
        return self.eval_metrics[key]

    def _eval_step(self, stage: str, batch: dict[str, Any], dataloader_idx: int) -> None:
        name = self._set_name(stage, dataloader_idx)
        metrics = self._metrics_for(stage, name)
        seen = self._seen[f"{stage}__{name}"]
        images = batch["image"]
        logits = self(images)
        label = batch.get("label")
        if label is not None and bool((label < self.num_classes).any()):
            metrics["seg"].update(logits, label)
            metrics["cal"].update(logits, label)
            seen["seg"] = True
        ood = batch.get("ood")
        if ood is not None and bool((ood != VOID_ID).any()):
            metrics["ood"].update(self.score(logits), ood)
            seen["ood"] = True

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Update the named set's streaming metrics."""
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Update the named set's streaming metrics."""
        self._eval_step("test", batch, dataloader_idx)

    def _log_epoch(self, stage: str) -> None:
        for key, metrics in self.eval_metrics.items():
            st, name = key.split("__", 1)
            if st != stage:
                continue
            seen = self._seen.get(key, {})
            # Each process may have seen different frames: agree before syncing metric states.
            flags = torch.tensor(
                [seen.get("seg", False), seen.get("ood", False)], device=self.device, dtype=torch.float32
            )
            flags = self.all_gather(flags).reshape(-1, 2).amax(0) if self.trainer.world_size > 1 else flags
            values: dict[str, Tensor] = {}
            plots: dict[str, Any] = {}
            if flags[0] > 0:
                values.update(metrics["seg"].compute())
                values.update(metrics["cal"].compute())
                if self.keep_evaluation_plots:
                    plots["reliability_diagram"] = metrics["cal"].reliability_diagram(title=f"{stage}/{name}")
            if flags[1] > 0:
                if metrics["ood"].is_computable():
                    values.update(metrics["ood"].compute())
                    if self.keep_evaluation_plots:
                        from synthrel_lightning.metrics.plots import roc_pr_figure

                        plots["roc_pr"] = roc_pr_figure(
                            metrics["ood"].curves(), title=f"{stage}/{name} ({self.ood_score})"
                        )
                elif key not in self._reported_skips:
                    self._reported_skips.add(key)
                    log.info(
                        "%s/%s: no OOD metrics: the set has no OOD pixels (or no in-distribution pixels)", stage, name
                    )
            for metric_name, value in values.items():
                self.log(f"{stage}/{name}/{metric_name}", value, sync_dist=False, add_dataloader_idx=False)
            if plots:
                self.evaluation_plots[f"{stage}/{name}"] = plots
            for m in metrics.values():
                m.reset()
            self._seen[key] = {"seg": False, "ood": False}

    def on_validation_epoch_end(self) -> None:
        """Compute and log every named set's metrics over the whole set."""
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        """Compute and log every named set's metrics over the whole set."""
        self._log_epoch("test")

    # ---------------------------------------------------------------- prediction
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Prediction (argmax train ids), OOD score map and frame names for a batch."""
        logits = self(batch["image"])
        return {
            "name": batch.get("name"),
            "prediction": logits.argmax(1).to(torch.uint8),
            "score": self.score(logits).float(),
        }

    # ----------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        """The configured optimizer (and scheduler) over the trainable parameters."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "train/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def configure_callbacks(self) -> Sequence[L.Callback]:
        """Parts this module relies on: epoch-keyed data seeding, the summary, the prediction writer."""
        from synthrel_lightning.callbacks.epoch_sync import DataEpochSync
        from synthrel_lightning.callbacks.prediction_writer import PredictionWriter
        from synthrel_lightning.callbacks.summary import MetricsSummary

        parts: list[L.Callback] = [DataEpochSync(), PredictionWriter(self.prediction_dir)]
        if self.summary:
            parts.append(MetricsSummary())
        return parts
