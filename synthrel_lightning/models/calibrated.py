"""Calibrated class scores of the OOD segmenter: one global temperature, or a clustered / local calibrator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from synthrel_lightning.calibration.calibrator import Calibrator

SPATIAL_KINDS = ("clustered", "lts")
"""Calibrations kept beside the weights (a global T is the ``temperature`` buffer)."""


class CalibratedScores:
    """Mixin of :class:`~synthrel_lightning.models.OODSegmenter`: scores calibrated by T or by a calibrator.

    ``calibrator`` (a :mod:`synthrel_lightning.calibration.calibrator` object fitted by ``calibrate --method
    clustered|lts`` or the ``TemperatureScaling`` callback) replaces the global ``temperature`` when set;
    it is saved in and restored from the checkpoint's ``calibration`` entry.
    """

    calibrator: Calibrator | None
    temperature: Tensor
    scorer: Any

    def raw_logits(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def calibrated_scores(self, images: Tensor, size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """Unscaled and calibrated class scores (B,K,H,W) of ``images`` (at ``size``), from one forward pass."""
        if self.calibrator is not None:
            return self.calibrator.scores(self, images, size)  # type: ignore[arg-type]
        raw = self.raw_logits(images, size)
        return raw, raw / self.temperature

    def calibrated_scores_and_ood(self, images: Tensor, size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """Calibrated class scores (B,K,H,W) and the OOD score (B,H,W) of ``images``, from one forward pass.

        Scores defined on raw outputs (standardized max logit, RbA, Mask2Anomaly) see them uncalibrated.
        """
        raw, calibrated = self.calibrated_scores(images, size)
        scorer = self.scorer
        return calibrated, scorer(calibrated if scorer.uses_temperature else raw)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep a clustered or local calibrator with the weights."""
        if self.calibrator is not None and self.calibrator.method in SPATIAL_KINDS:
            checkpoint["calibration"] = self.calibrator.state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the clustered or local calibrator a checkpoint carries."""
        from synthrel_lightning.calibration.calibrator import calibrator_from_state

        entry = checkpoint.get("calibration")
        if isinstance(entry, dict) and entry.get("kind") in SPATIAL_KINDS:
            self.calibrator = calibrator_from_state(entry, where="OODSegmenter checkpoint")


__all__ = ["CalibratedScores", "SPATIAL_KINDS"]
