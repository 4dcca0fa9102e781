"""The OOD segmenter: any segmenter + composable loss terms + OOD score + streaming metrics.

This module holds its construction, inference, training, prediction and optimiser; the evaluation
bookkeeping (named sets, per-set metrics, logging, the component pass) is its mixin
:class:`~synthrel_lightning.models.set_evaluation.SetEvaluation`, the set-up helpers are in
:mod:`~synthrel_lightning.models.setup`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal, cast

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from synthrel_lightning.hub.pretrained import PretrainedMixin
from synthrel_lightning.labels import NUM_CLASSES, TRAIN_ID_NAMES
from synthrel_lightning.losses import CrossEntropy, LossTerm
from synthrel_lightning.models.calibrated import CalibratedScores
from synthrel_lightning.models.mask_classification import model_criterion_of, run_segmenter
from synthrel_lightning.models.outputs import MaskClassificationOutput, class_scores_at, identify_output
from synthrel_lightning.models.param_groups import ParamGroups
from synthrel_lightning.models.set_evaluation import SetEvaluation
from synthrel_lightning.models.set_metrics import (
    DEFAULT_METRICS,
    MetricGroup,
    check_metric_groups,
    check_ood_metric_mode,
)
from synthrel_lightning.models.setup import built_from_config, declared_output_kind, freeze_except
from synthrel_lightning.scores.protocol import OODScore, OutputKind, StatefulScore
from synthrel_lightning.scores.registry import ScoreName

log = logging.getLogger(__name__)


def _weighted(terms: list[LossTerm], values: list[Tensor]) -> dict[str, Tensor]:
    parts: dict[str, Tensor] = {}
    total: Tensor | None = None
    for term, value in zip(terms, values):
        key = f"loss_{term.name}"
        while key in parts:
            key += "_"
        parts[key] = value
        # One fused multiply-add per term keeps the kernel count of the sum low.
        total = value * term.weight if total is None else torch.add(total, value, alpha=term.weight)
    if total is not None:
        parts["loss"] = total
    return parts


class OODSegmenter(CalibratedScores, SetEvaluation, PretrainedMixin, L.LightningModule):
    """Semantic segmenter trained for reliability: in-distribution accuracy, OOD detection, calibration.

    Args:
        segmenter: a module mapping images (B,3,H,W) to per-pixel logits (a (B,K,h,w) tensor, a dict
            with ``out``/``logits``, or an object with ``.logits`` such as a raw transformers
            ``SegformerForSemanticSegmentation``) or to mask-classification outputs
            (:class:`~synthrel_lightning.models.HFMask2Former`, :class:`~synthrel_lightning.models.HFOneFormer`).
            A segmenter declares its kind with an ``output_kind`` attribute (``"per_pixel"`` /
            ``"mask_classification"``); undeclared ones are taken as per-pixel and checked on the first call.
            Everything downstream (scores, metrics, calibration) reads per-pixel class scores at the label
            size: the upsampled logits, or ``l_k = Σ_q softmax(c_q)[k] σ(m_q)`` of mask classification.
        num_classes: K, the number of in-distribution classes.
        losses: weighted loss terms summed into the objective. Per-pixel models: default cross-entropy.
            Mask-classification models train with their own criterion (``model_criterion``) plus these
            terms, which must declare ``requires_mask_classification`` and receive the per-pixel class
            scores (B,K,h,w) at the mask resolution, for the last and every auxiliary decoder layer.
        loss_weights: weights by term name (e.g. ``{"energy_hinge": 0.2}``) overriding the terms' own.
        model_criterion: weight of a mask-classification model's own criterion (0 leaves it out).
        ood_score: a score name (see :data:`synthrel_lightning.scores.SCORE_NAMES`), an
            :class:`~synthrel_lightning.scores.OODScore` module, or any module mapping temperature-scaled
            class scores (B,K,H,W) to a score map (B,H,W).
        trainable: regular expressions over the segmenter's parameter names; when given, only matching
            parameters train (RbA: ``["class_predictor", "mask_embedder"]`` for Mask2Former).
        optimizer: optimizer factory (LightningCLI: ``class_path``/``init_args``).
        scheduler: optional learning-rate scheduler factory.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        metrics: metric groups every set computes (``segmentation``, ``calibration``, ``misclassification``,
            ``pixel_ood``, ``components``); OOD groups only on sets with OOD labels.
        set_metrics: per-set overrides of ``metrics`` by set name.
        component_tracks: SMIYC size rules of the component metrics per set name (``anomaly``: default,
            or ``obstacle``).
        ood_protocol: ``"benchmark"`` (SMIYC: pixels pooled over the set, void left out) or ``"paper"``
            (AUROC/AP/FPR95 per image with void counted as negative, averaged over images; the pooled
            values are then logged as ``pooled_<metric>``).
        ood_metric_mode: ``"binned"`` (constant memory) or ``"exact"`` pixel OOD metrics, or ``"official"``
            (the SegmentMeIfYouCan benchmark's per-frame percentile aggregation, as on its leaderboard).
        calibration_bins: bins of the top-1 ECE.
        val_set_names / test_set_names: names of the evaluation dataloaders, used in
            logged keys ``val/<name>/<metric>``; by default taken from the datamodule, else ``val_0``...
        class_names: names of the K classes (for per-class IoU keys).
        summary: write ``metrics_summary.{json,md}`` after fit/validate/test.
        prediction_dir: where ``predict`` writes prediction and score maps (default ``<log_dir>/predictions``).
        compile_losses: compile the summed loss terms with ``torch.compile`` (CUDA only).
        param_groups: optimizer parameter groups (learning-rate multipliers, weight decay of norms and
            embeddings; :class:`~synthrel_lightning.models.param_groups.ParamGroups`); default one group.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        num_classes: int = NUM_CLASSES,
        losses: list[LossTerm] | None = None,
        loss_weights: dict[str, float] | None = None,
        model_criterion: float = 1.0,
        ood_score: ScoreName | nn.Module = "energy",
        trainable: list[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        metrics: list[MetricGroup] | None = None,
        set_metrics: dict[str, list[MetricGroup]] | None = None,
        component_tracks: dict[str, Literal["anomaly", "obstacle"]] | None = None,
        ood_protocol: Literal["benchmark", "paper"] = "benchmark",
        ood_metric_mode: str = "binned",
        calibration_bins: int = 15,
        val_set_names: list[str] | None = None,
        test_set_names: list[str] | None = None,
        class_names: list[str] | None = None,
        summary: bool = True,
        prediction_dir: str | None = None,
        compile_losses: bool = False,
        param_groups: ParamGroups | None = None,
    ) -> None:
        super().__init__()
        if built_from_config():
            # LightningCLI hands over the configuration (plain data) as hyperparameters: keep
            # all of it, so load_from_checkpoint can rebuild the segmenter and loss terms.
            self.save_hyperparameters()
        else:
            self.save_hyperparameters(
                ignore=["segmenter", "losses", "optimizer", "scheduler", "ood_score", "param_groups"]
            )
            if isinstance(ood_score, str):
                self.hparams["ood_score"] = ood_score
        self.segmenter = segmenter
        self.num_classes = int(num_classes)
        self.output_kind: OutputKind = declared_output_kind(segmenter)
        self._output_checked = False
        mask_classification = self.output_kind == "mask_classification"
        default_losses = [] if mask_classification else [CrossEntropy()]
        self.losses = nn.ModuleList(losses if losses is not None else default_losses)
        for term in self.losses:
            if not isinstance(term, LossTerm):
                raise TypeError(f"OODSegmenter: losses must be LossTerm instances, got {type(term).__name__}")
            needs_masks = bool(getattr(term, "requires_mask_classification", False))
            if needs_masks and not mask_classification:
                raise ValueError(
                    f"OODSegmenter: loss term {term.name!r} needs mask-classification outputs (per-pixel class "
                    f"scores of a Mask2Former/OneFormer), but the segmenter {type(segmenter).__name__} outputs "
                    "per-pixel logits"
                )
            if mask_classification and not needs_masks:
                raise ValueError(
                    f"OODSegmenter: loss term {term.name!r} is defined on per-pixel logits, but the segmenter "
                    f"{type(segmenter).__name__} is a mask-classification model, which trains with its own "
                    "criterion (model_criterion) plus mask-classification terms"
                )
        if not mask_classification and len(self.losses) == 0:
            raise ValueError("OODSegmenter: losses must hold at least one LossTerm")
        if not model_criterion >= 0:
            raise ValueError(f"OODSegmenter: model_criterion must be >= 0, got {model_criterion!r}")
        self.model_criterion = float(model_criterion)
        if loss_weights:
            by_name = {term.name: term for term in cast("list[LossTerm]", list(self.losses))}
            unknown = sorted(set(loss_weights) - set(by_name))
            if unknown:
                raise ValueError(
                    f"OODSegmenter: loss_weights names {unknown} match no loss term; terms: {sorted(by_name)}"
                )
            for term_name, w in loss_weights.items():
                if not w >= 0:
                    raise ValueError(f"OODSegmenter: loss weight {term_name}={w!r} must be >= 0")
                by_name[term_name].weight = float(w)
        self.scorer = self._build_scorer(ood_score)
        self.ood_score = self.scorer.name
        if trainable is not None:
            freeze_except(self.segmenter, trainable, "OODSegmenter")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.param_groups = param_groups
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.scheduler_interval = scheduler_interval
        self.metric_groups = check_metric_groups(
            list(metrics) if metrics is not None else list(DEFAULT_METRICS), "OODSegmenter"
        )
        self.set_metric_groups = {
            name: check_metric_groups(list(groups), f"OODSegmenter set_metrics[{name!r}]")
            for name, groups in (set_metrics or {}).items()
        }
        from synthrel_lightning.metrics import TRACK_SIZES

        self.component_tracks = dict(component_tracks or {})
        bad = {k: v for k, v in self.component_tracks.items() if v not in TRACK_SIZES}
        if bad:
            raise ValueError(f"OODSegmenter: component_tracks {bad}: tracks must be one of {sorted(TRACK_SIZES)}")
        if ood_protocol not in ("benchmark", "paper"):
            raise ValueError(f"OODSegmenter: ood_protocol must be 'benchmark' or 'paper', got {ood_protocol!r}")
        self.ood_protocol = ood_protocol
        self.ood_metric_mode = check_ood_metric_mode(ood_metric_mode, "OODSegmenter")
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
        self.calibrator = None  # a clustered or local calibrator replaces ``temperature`` (CalibratedScores)
        # Evaluation metrics per (stage, set name), created on first use.
        self.eval_metrics = nn.ModuleDict()
        self._seen: dict[str, dict[str, bool]] = {}
        self._dataloader_of: dict[str, int] = {}
        self._reported_skips: set[str] = set()
        # Set by ReliabilityPlots: keep each set's reliability diagram and ROC/PR figures
        # (built from the metric states of all processes) for loggers to pick up.
        self.keep_evaluation_plots = False
        self.evaluation_plots: dict[str, dict[str, Any]] = {}

    def _build_scorer(self, ood_score: str | nn.Module) -> OODScore:
        from synthrel_lightning.scores import ModuleScore, build_scorer

        if isinstance(ood_score, str):
            scorer = build_scorer(ood_score, num_classes=self.num_classes)
        elif isinstance(ood_score, OODScore):
            scorer = ood_score
        elif isinstance(ood_score, nn.Module):
            scorer = ModuleScore(ood_score)
        else:
            raise TypeError(
                f"OODSegmenter: ood_score must be a score name or an nn.Module, got {type(ood_score).__name__}"
            )
        scorer.check_output_kind(self.output_kind)
        if getattr(scorer, "num_classes", self.num_classes) != self.num_classes:
            raise ValueError(
                f"OODSegmenter: the OOD score has num_classes={scorer.num_classes}, the model {self.num_classes}"
            )
        return scorer

    # ----------------------------------------------------------------- inference
    def segmenter_output(self, images: Tensor) -> Tensor | MaskClassificationOutput:
        """The segmenter's output, identified: per-pixel logits (B,K,h,w) or mask-classification outputs."""
        kind, content = identify_output(run_segmenter(self.segmenter, images))
        if kind != self.output_kind:
            raise TypeError(
                f"OODSegmenter: the segmenter {type(self.segmenter).__name__} returned {kind.replace('_', '-')} "
                f"outputs but declares (or was taken to output) {self.output_kind.replace('_', '-')} ones; set its "
                "output_kind attribute"
            )
        if not self._output_checked:
            k = content.shape[1] if isinstance(content, Tensor) else content.class_logits.shape[-1] - 1
            if (isinstance(content, Tensor) and content.ndim != 4) or k != self.num_classes:
                shape = tuple(content.shape) if isinstance(content, Tensor) else tuple(content.class_logits.shape)
                expected = (
                    f"(B, {self.num_classes}, h, w)"
                    if isinstance(content, Tensor)
                    else f"class logits (B, Q, {self.num_classes + 1})"
                )
                raise ValueError(f"OODSegmenter: the segmenter returned shape {shape}; expected {expected}")
            self._output_checked = True
        return content

    def class_scores(self, output: Tensor | MaskClassificationOutput, size: tuple[int, int]) -> Tensor:
        """Per-pixel class scores (B,K,H,W) at ``size`` (bilinear; masks are upsampled before ``l_k``)."""
        return class_scores_at(output, size)

    def raw_logits(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Per-pixel class scores (B,K,H,W) at the input resolution (or ``size``), before temperature scaling."""
        return self.class_scores(self.segmenter_output(images), size or (images.shape[-2], images.shape[-1]))

    def forward(self, images: Tensor) -> Tensor:
        """Calibrated per-pixel class scores (B,K,H,W) at the input resolution."""
        return self.calibrated_scores(images)[1]

    def set_ood_score(self, score: str | nn.Module) -> None:
        """Switch the OOD score used by evaluation and prediction (e.g. to compare scores on one model)."""
        self.scorer = self._build_scorer(score).to(self.device)
        self.ood_score = self.scorer.name
        self.hparams["ood_score"] = self.ood_score

    def score(self, logits: Tensor) -> Tensor:
        """OOD score map (B,H,W) of temperature-scaled class scores; higher = more OOD.

        Scores defined on the raw outputs (standardized max logit, RbA, Mask2Anomaly) see them
        without the temperature.
        """
        if not self.scorer.uses_temperature:
            logits = logits * self.temperature
        return self.scorer(logits)

    @torch.no_grad()
    def compute_score_statistics(self, batches: Iterable[dict[str, Any]], max_batches: int | None = None) -> int:
        """Fill a stateful score's statistics with an eval-mode pass over ``batches`` (training images).

        Returns the number of batches used. Does nothing for stateless scores.
        """
        if not isinstance(self.scorer, StatefulScore):
            return 0
        was_training = self.training
        self.eval()
        from synthrel_lightning.data.transforms import normalize_images

        self.scorer.reset_statistics()
        n = 0
        try:
            for batch in batches:
                if max_batches is not None and n >= max_batches:
                    break
                # uint8 images come from loaders that normalise on the device (ImageNet statistics).
                images = normalize_images(batch["image"].to(self.device))
                label = batch.get("label")
                shape = label.shape if label is not None else images.shape
                size = (shape[-2], shape[-1])
                raw = self.raw_logits(images, size)
                self.scorer.update_statistics(raw, None if label is None else label.to(self.device))
                n += 1
            self.scorer.finalize()
        finally:
            self.train(was_training)
        return n

    # ------------------------------------------------------------------ training
    def compute_losses(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The weighted total (``loss``) and each unweighted term (``loss_<name>``) on per-pixel logits.

        With several terms, the per-pixel statistics they read (logsumexp, max, sigmoid
        sums, masks) are computed once for all of them, and the target is checked once,
        after the whole objective is queued (see :func:`synthrel_lightning.losses.evaluate_terms`).
        """
        from synthrel_lightning.losses import check_target_values, evaluate_terms

        terms = cast("list[LossTerm]", list(self.losses))  # each checked to be a LossTerm at construction
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
        return _weighted(terms, values)

    def compute_mask_classification_losses(self, output: MaskClassificationOutput, target: Tensor) -> dict[str, Tensor]:
        """The model's own criterion (``loss_criterion``) plus each term on the last and every auxiliary layer."""
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        if self.model_criterion > 0:
            criterion = model_criterion_of(self.segmenter)
            if criterion is None:
                raise TypeError(
                    f"OODSegmenter: the mask-classification segmenter {type(self.segmenter).__name__} has no "
                    "criterion(output, target); wrap it in HFMask2Former/HFOneFormer or set model_criterion=0"
                )
            own = sum(criterion(output, target).values())
            if not isinstance(own, Tensor):
                raise TypeError(f"OODSegmenter: the criterion of {type(self.segmenter).__name__} returned no loss")
            parts["loss_criterion"] = own
            total = own * self.model_criterion
        terms = cast("list[LossTerm]", list(self.losses))  # each checked to be a LossTerm at construction
        if terms:
            layers = [output.class_scores(), *output.aux_class_scores()]
            values = [sum(term(scores, target) for scores in layers) for term in terms]
            term_parts = _weighted(terms, values)
            total = term_parts["loss"] if total is None else total + term_parts.pop("loss")
            term_parts.pop("loss", None)
            parts.update(term_parts)
        if total is None:
            raise ValueError("OODSegmenter: nothing to train: model_criterion is 0 and there are no loss terms")
        parts["loss"] = total
        return parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One optimisation step on a batch dict with ``image`` and ``label``."""
        images, target = batch["image"], batch["label"]
        output = self.segmenter_output(images)
        if isinstance(output, MaskClassificationOutput):
            parts = self.compute_mask_classification_losses(output, target)
        else:
            parts = self.compute_losses(self.class_scores(output, tuple(target.shape[-2:])), target)
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
        return parts["loss"]

    # ---------------------------------------------------------------- prediction
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Prediction (argmax train ids), OOD score map and frame names for a batch."""
        logits, score = self.calibrated_scores_and_ood(batch["image"])
        return {
            "name": batch.get("name"),
            "prediction": logits.argmax(1).to(torch.uint8),
            "score": score.float(),
        }

    # ----------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        """The configured optimizer (and scheduler) over the trainable parameters."""
        if self.param_groups is None:
            optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        else:
            optimizer = self.param_groups.apply(self.optimizer_factory(self.param_groups(self)))
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
        if isinstance(self.scorer, StatefulScore):
            from synthrel_lightning.callbacks.sml_statistics import SMLStatistics

            user_callbacks = getattr(self.trainer, "callbacks", []) if self._trainer is not None else []
            if not any(isinstance(c, SMLStatistics) for c in user_callbacks):
                parts.append(SMLStatistics())
        if self.summary:
            parts.append(MetricsSummary())
        return parts
