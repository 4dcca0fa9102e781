"""Post-hoc temperature scaling as a Lightning callback: fit T on a named set, store it in the module."""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from synthrel_lightning.calibration import (
    DEFAULT_PIXELS_PER_IMAGE,
    PAPER_GRID,
    PixelsPerImage,
    TemperatureFit,
    collect_logits,
    fit_temperature,
)
from synthrel_lightning.calibration.calibrator import CALIBRATION_METHODS, Calibrator, calibrator_from_state
from synthrel_lightning.calibration.checkpoint import CalibrationMethod, fit_spatial_calibration
from synthrel_lightning.calibration.clustered import RELIS_SEED
from synthrel_lightning.data.named_sets import trainer_loader

log = logging.getLogger(__name__)


@runtime_checkable
class _HoldsCalibrator(Protocol):
    """A module that applies a clustered or local calibrator when it holds one (the OOD segmenter does)."""

    calibrator: Calibrator | None


_WHEN = ("fit_end", "validation_end")


class TemperatureScaling(Callback):
    """Fits one global temperature on a validation set and writes it into ``pl_module.temperature``.

    The module must have a scalar buffer ``temperature`` (it divides its logits by it)
    and ideally ``raw_logits(images)`` (logits before that division; else ``module(images)``
    is used, which must then be unscaled). Because the buffer is in the ``state_dict``,
    the fitted T persists in checkpoints saved afterwards.

    Args:
        set_name: name of the validation dataloader to fit on (the datamodule's
            ``val_set_names``; ``val_<i>`` without them); ``None`` when there is one loader.
        dataloader: a loader to fit on instead of a named validation set.
        method: ``"nll"`` or ``"ece_grid"`` (see :func:`synthrel_lightning.calibration.fit_temperature`),
            ``"clustered"`` or ``"lts"`` (below).
        when: ``"fit_end"`` (once, after training; checkpoints saved during training do not
            hold T) or ``"validation_end"`` (after every validation epoch except the sanity
            check, before ModelCheckpoint saves, so saved checkpoints hold the T of that epoch).
        grid, num_bins, pixels_per_image, max_pixels, seed: fitting options of ``fit_temperature``
            (``pixels_per_image``: the seeded per-frame sample, 20,000 as the authors, or ``"all"``).
        max_batches: fit on at most this many batches of the loader.

    The fit runs on global rank 0 over the whole loader and T is broadcast to all processes.
    T is logged as ``calibration/temperature``.

    ``method="clustered"`` (one T per k-means cluster of images) and ``"lts"`` (a per-pixel T
    network) fit a calibrator as ``calibrate`` does (options in ``spatial_options``, e.g.
    ``{"n_clusters": 4, "feature_module": "segmenter.model.encoder"}``; see
    :func:`~synthrel_lightning.calibration.checkpoint.calibrate`); it is kept in
    :attr:`calibrator` (``calibrator(module, images)`` gives calibrated class scores) and in the
    trainer checkpoint's callback state, and the module's scalar ``temperature`` stays 1.
    """

    def __init__(
        self,
        set_name: str | None = None,
        dataloader: Any | None = None,
        method: CalibrationMethod = "nll",
        when: str = "fit_end",
        grid: tuple[float, float, float] = PAPER_GRID,
        num_bins: int = 15,
        pixels_per_image: PixelsPerImage = DEFAULT_PIXELS_PER_IMAGE,
        max_pixels: int = 2_000_000,
        max_batches: int | None = None,
        seed: int = 0,
        extend_grid: bool = True,
        spatial_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if when not in _WHEN:
            raise ValueError(f"TemperatureScaling: when must be one of {_WHEN}, got {when!r}")
        if method not in CALIBRATION_METHODS:
            raise ValueError(
                f"TemperatureScaling: unknown method {method!r}; valid methods: {', '.join(CALIBRATION_METHODS)}"
            )
        self.extend_grid = extend_grid
        self.spatial_options = dict(spatial_options or {})
        self.calibrator: Calibrator | None = None
        """The fitted clustered or local calibrator (``method`` "clustered" or "lts")."""
        self.calibration_state: dict[str, Any] | None = None
        self.set_name = set_name
        self.dataloader = dataloader
        self.method = method
        self.when = when
        low, high, step = grid  # a list from a YAML config too
        self.grid = (low, high, step)
        self.num_bins = num_bins
        self.pixels_per_image = pixels_per_image
        self.max_pixels = max_pixels
        self.max_batches = max_batches
        self.seed = seed
        self.temperature: float | None = None
        """The last fitted temperature."""
        self.last_fit: TemperatureFit | None = None
        """The last fit on this process (rank 0 only): T and the ECE before/after on the pixels used."""

    def _loader(self, trainer: L.Trainer) -> Any:
        if self.dataloader is not None:
            return self.dataloader
        return trainer_loader(trainer, self.set_name, "val", "TemperatureScaling")

    def fit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """Fit T (on rank 0, broadcast to all) and write it into ``pl_module.temperature``."""
        buffer = getattr(pl_module, "temperature", None)
        if not isinstance(buffer, Tensor) or buffer.numel() != 1:
            raise AttributeError(
                f"TemperatureScaling: {type(pl_module).__name__} needs a scalar tensor buffer 'temperature' "
                "(register_buffer('temperature', torch.ones(()))) that divides its logits"
            )
        if self.method == "clustered" or self.method == "lts":
            return self._fit_spatial(trainer, pl_module)
        value = 0.0
        if trainer.is_global_zero:
            # Fitting needs autograd (LBFGS) even inside Lightning's inference-mode loops.
            with torch.inference_mode(False):
                self.last_fit = fit_temperature(
                    collect_logits(pl_module, self._loader(trainer), max_batches=self.max_batches),
                    method=self.method,
                    grid=self.grid,
                    num_bins=self.num_bins,
                    pixels_per_image=self.pixels_per_image,
                    max_pixels=self.max_pixels,
                    seed=self.seed,
                    extend_grid=self.extend_grid,
                )
                value = self.last_fit.temperature
                for note in self.last_fit.grid_notes:
                    log.warning("TemperatureScaling: %s", note)
        value = float(trainer.strategy.broadcast(value, src=0))
        if isinstance(pl_module, _HoldsCalibrator) and pl_module.calibrator is not None:
            pl_module.calibrator = None  # one global T replaces an earlier clustered/local calibrator
        with torch.no_grad():
            buffer.fill_(value)
        self.temperature = value
        log.info("TemperatureScaling: T=%.4f (%s on %s)", value, self.method, self.set_name or "the validation set")
        return value

    def _fit_spatial(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """Fit the clustered or local calibrator on rank 0 and share it with every process; returns 1.0."""
        state: dict[str, Any] | None = None
        if trainer.is_global_zero:
            options = {
                "grid": self.grid, "num_bins": self.num_bins, "pixels_per_image": self.pixels_per_image,
                "seed": self.seed, "extend_grid": self.extend_grid, "n_clusters": 4, "cluster_seed": RELIS_SEED,
                "assignment": "hard", "feature_module": None, "lts_epochs": 10, "lts_lr": 1e-4,
                "lts_batch_size": 4, "lts_val_fraction": 0.2, "lts_max_images": 500, **self.spatial_options,
            }  # fmt: skip
            with torch.inference_mode(False):
                state, lines = fit_spatial_calibration(
                    pl_module, self._loader(trainer), self.method, self.max_batches, **options
                )
            for line in lines:
                log.info("TemperatureScaling (%s): %s", self.method, line)
        state = trainer.strategy.broadcast(state, src=0)
        assert state is not None
        self.calibration_state = state
        self.calibrator = calibrator_from_state(state, where="TemperatureScaling")
        self.temperature = 1.0
        if isinstance(pl_module, _HoldsCalibrator):
            # The OOD segmenter applies it in its evaluation and prediction from now on (and saves it).
            pl_module.calibrator = self.calibrator
        return 1.0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """With ``when="validation_end"``: refit T after each validation epoch."""
        if self.when != "validation_end" or trainer.sanity_checking:
            return
        value = self.fit(trainer, pl_module)
        pl_module.log("calibration/temperature", value, add_dataloader_idx=False, sync_dist=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """With ``when="fit_end"``: fit T once training is over."""
        if self.when != "fit_end":
            return
        value = self.fit(trainer, pl_module)
        # self.log is not available in on_fit_end; write to the loggers directly.
        for logger in trainer.loggers:
            logger.log_metrics({"calibration/temperature": value}, step=trainer.global_step)
            logger.save()
        trainer.callback_metrics["calibration/temperature"] = torch.tensor(value)

    def state_dict(self) -> dict[str, Any]:
        """The last fitted temperature and calibrator (restored with the trainer's checkpoint)."""
        return {"temperature": self.temperature, "calibration": self.calibration_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the last fitted temperature and calibrator."""
        self.temperature = state_dict.get("temperature")
        self.calibration_state = state_dict.get("calibration")
        if self.calibration_state is not None:
            self.calibrator = calibrator_from_state(self.calibration_state, where="TemperatureScaling state")
