"""Evaluation bookkeeping of the OOD segmenter: named sets, streaming metrics per set, the component pass.

:class:`SetEvaluation` is a mixin of :class:`~synthrel_lightning.models.OODSegmenter`. Each evaluation
batch of a named set updates that set's metrics (built on first use by
:func:`~synthrel_lightning.models.set_metrics.build_set_metrics`) and returns an
:class:`~synthrel_lightning.evaluation_result.EvaluationResult` for callbacks. At the end of the epoch every
set's metrics are computed over the whole set and logged as ``<stage>/<set>/<metric>``; component-level
metrics take a second pass over the set's loader at the set's best-F1 threshold of the pixel-level pass.

The mixin reads what the module defines: ``calibrated_scores_and_ood``, ``num_classes``,
``class_names``, ``ood_score``, the metric settings (``metric_groups``, ``set_metric_groups``,
``ood_metric_mode``, ``calibration_bins``, ``ood_protocol``, ``component_tracks``), ``set_names``,
``keep_evaluation_plots``, and the state it creates (``eval_metrics``, ``evaluation_plots``, ``_seen``,
``_dataloader_of``, ``_reported_skips``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from synthrel_lightning.evaluation_result import EvaluationResult
from synthrel_lightning.labels import VOID_ID
from synthrel_lightning.models.set_metrics import OODMetricMode, build_set_metrics

if TYPE_CHECKING:
    from lightning import LightningModule as _ModuleBase
else:
    _ModuleBase = object

log = logging.getLogger(__name__)


class SetEvaluation(_ModuleBase):
    """Named evaluation sets: per-set streaming metrics, evaluation results for callbacks, epoch-end logging."""

    # What the module mixing this in defines (see the module docstring).
    set_names: dict[str, list[str] | None]
    metric_groups: list[str]
    set_metric_groups: dict[str, list[str]]
    num_classes: int
    class_names: list[str]
    ood_metric_mode: OODMetricMode
    calibration_bins: int
    ood_protocol: Literal["benchmark", "paper"]
    component_tracks: dict[str, Literal["anomaly", "obstacle"]]
    ood_score: str
    keep_evaluation_plots: bool
    eval_metrics: nn.ModuleDict
    evaluation_plots: dict[str, dict[str, Any]]
    _seen: dict[str, dict[str, bool]]
    _dataloader_of: dict[str, int]
    _reported_skips: set[str]

    if TYPE_CHECKING:

        def calibrated_scores_and_ood(
            self, images: Tensor, size: tuple[int, int] | None = None
        ) -> tuple[Tensor, Tensor]: ...

    def set_name(self, stage: str, dataloader_idx: int) -> str:
        """The name of evaluation set ``dataloader_idx`` of ``stage`` (``val``/``test``)."""
        names = self.set_names.get(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if names is None and datamodule is not None:  # the Trainer sets datamodule at run time
            names = getattr(datamodule, f"{stage}_set_names", None)
        if names is not None and dataloader_idx < len(names):
            return str(names[dataloader_idx])
        return f"{stage}_{dataloader_idx}"

    def _metrics_for(self, stage: str, name: str) -> nn.ModuleDict:
        key = f"{stage}__{name}"
        if key not in self.eval_metrics:
            self.eval_metrics[key] = build_set_metrics(
                self.set_metric_groups.get(name, self.metric_groups),
                self.num_classes,
                self.class_names,
                self.ood_metric_mode,
                self.calibration_bins,
                self.ood_protocol,
                self.component_tracks.get(name, "anomaly"),
            ).to(self.device)
            self._seen[key] = {"seg": False, "ood": False}
        metrics = self.eval_metrics[key]
        if not isinstance(metrics, nn.ModuleDict):  # only build_set_metrics' dicts are stored there
            raise TypeError(f"OODSegmenter: eval_metrics[{key!r}] is a {type(metrics).__name__}, not a ModuleDict")
        return metrics

    def evaluate_batch(
        self, stage: str, batch: dict[str, Any], batch_idx: int, dataloader_idx: int
    ) -> EvaluationResult:
        """Class scores and OOD score of an evaluation batch, checked for non-finite values."""
        name = self.set_name(stage, dataloader_idx)
        images = batch["image"]
        label, ood = batch.get("label"), batch.get("ood")
        shape = (label if label is not None else ood if ood is not None else images).shape
        size = (shape[-2], shape[-1])
        logits, score = self.calibrated_scores_and_ood(images, size)
        for what, value in (("class scores", logits), ("OOD scores", score)):
            if not bool(torch.isfinite(value).all()):
                raise FloatingPointError(
                    f"OODSegmenter: non-finite {what} ({self.ood_score if what == 'OOD scores' else 'model output'}) "
                    f"in {stage} set {name!r}, batch {batch_idx}"
                )
        return EvaluationResult(
            stage=stage,
            set_name=name,
            batch_idx=batch_idx,
            dataloader_idx=dataloader_idx,
            images=images,
            logits=logits.detach(),
            score=score.detach(),
            label=label,
            ood=ood,
            names=batch.get("name"),
        )

    def _eval_step(self, stage: str, batch: dict[str, Any], batch_idx: int, dataloader_idx: int) -> EvaluationResult:
        result = self.evaluate_batch(stage, batch, batch_idx, dataloader_idx)
        key = f"{stage}__{result.set_name}"
        metrics: Any = self._metrics_for(stage, result.set_name)  # metric modules of several kinds by group
        self._dataloader_of[key] = dataloader_idx
        seen = self._seen[key]
        label, ood = result.label, result.ood
        if label is not None and bool((label < self.num_classes).any()):
            for group in ("segmentation", "calibration", "misclassification"):
                if group in metrics:
                    metrics[group].update(result.logits, label)
            seen["seg"] = True
        if ood is not None and bool((ood != VOID_ID).any()):
            if "pixel_ood" in metrics:
                metrics["pixel_ood"].update(result.score, ood)
            if "paper_ood" in metrics:
                metrics["paper_ood"].update(result.score, ood)
            seen["ood"] = True
        return result

    # Lightning types its step hooks as (*args, **kwargs) -> Tensor | Mapping | None; any output reaches callbacks.
    def validation_step(  # type: ignore[override]
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> EvaluationResult:
        """Update the named set's streaming metrics; the batch's :class:`EvaluationResult` for callbacks."""
        return self._eval_step("val", batch, batch_idx, dataloader_idx)

    def test_step(  # type: ignore[override]
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> EvaluationResult:
        """Update the named set's streaming metrics; the batch's :class:`EvaluationResult` for callbacks."""
        return self._eval_step("test", batch, batch_idx, dataloader_idx)

    def _component_pass(self, stage: str, name: str, dataloader_idx: int, metric: Any, threshold: float) -> None:
        """Second pass over the set's loader: component metrics at the set's best-F1 threshold."""
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        if loader is None:
            raise RuntimeError(f"OODSegmenter: no {stage} loader to take the component pass over set {name!r}")
        limits = self.trainer.num_val_batches if stage == "val" else self.trainer.num_test_batches
        limit = limits[dataloader_idx] if dataloader_idx < len(limits) else float("inf")
        metric.set_threshold(threshold)
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if i >= limit:
                    break
                batch = self.transfer_batch_to_device(batch, self.device, dataloader_idx)
                ood = batch.get("ood")
                if ood is None:
                    continue
                result = self.evaluate_batch(stage, batch, i, dataloader_idx)
                metric.update(result.score, ood)

    def _log_epoch(self, stage: str) -> None:
        for key, group_metrics in self.eval_metrics.items():
            metrics: Any = group_metrics  # metric modules of several kinds by group
            st, name = key.split("__", 1)
            if st != stage:
                continue
            seen = self._seen.get(key, {})
            # Each process may have seen different frames: agree before syncing metric states.
            flags = torch.tensor(
                [seen.get("seg", False), seen.get("ood", False)], device=self.device, dtype=torch.float32
            )
            if self.trainer.world_size > 1:
                # Lightning types all_gather's result as any collection; a tensor gathers to a tensor
                flags = self.all_gather(flags).reshape(-1, 2).amax(0)  # type: ignore[union-attr]
            values: dict[str, Tensor] = {}
            plots: dict[str, Any] = {}
            if flags[0] > 0:
                if "segmentation" in metrics:
                    values.update(metrics["segmentation"].compute())
                if "misclassification" in metrics:
                    values.update(metrics["misclassification"].compute())
                if "calibration" in metrics:
                    values.update(metrics["calibration"].compute())
                    if self.keep_evaluation_plots:
                        plots["reliability_diagram"] = metrics["calibration"].reliability_diagram(
                            title=f"{stage}/{name}"
                        )
            if flags[1] > 0 and "pixel_ood" in metrics:
                if metrics["pixel_ood"].is_computable():
                    pooled = metrics["pixel_ood"].compute()
                    if "paper_ood" in metrics:
                        values.update({f"pooled_{k}": v for k, v in pooled.items()})
                        if metrics["paper_ood"].is_computable():
                            values.update(metrics["paper_ood"].compute())
                    else:
                        values.update(pooled)
                    if "components" in metrics and not self.trainer.sanity_checking:
                        self._component_pass(
                            stage,
                            name,
                            self._dataloader_of.get(key, 0),
                            metrics["components"],
                            float(pooled["best_f1_threshold"]),
                        )
                        values.update(metrics["components"].compute())
                    if self.keep_evaluation_plots:
                        from synthrel_lightning.metrics.plots import roc_pr_figure

                        plots["roc_pr"] = roc_pr_figure(
                            metrics["pixel_ood"].curves(), title=f"{stage}/{name} ({self.ood_score})"
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


__all__ = ["SetEvaluation"]
