"""Logs each evaluation set's reliability diagram and ROC / precision-recall curves."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import lightning as L
from lightning.pytorch.callbacks import Callback

from synthrel_lightning.callbacks.correlation import log_figure


@runtime_checkable
class _KeepsEvaluationPlots(Protocol):
    """A module that can keep its evaluation figures (as :class:`~synthrel_lightning.models.OODSegmenter` does)."""

    keep_evaluation_plots: bool


class ReliabilityPlots(Callback):
    """After each validation (and test), sends every named set's reliability diagram and, for sets
    with OOD pixels, its ROC and precision-recall curves to the loggers (TensorBoard figures,
    wandb images; PNG files under ``<log_dir>/plots`` otherwise).

    The figures come from the dataset-level metric states of the
    :class:`~synthrel_lightning.models.OODSegmenter` (all processes), not from a sample.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"ReliabilityPlots: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.logged: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Ask the module to keep its evaluation figures."""
        if not isinstance(pl_module, _KeepsEvaluationPlots):
            raise TypeError(
                "ReliabilityPlots needs an OODSegmenter-like module with evaluation plots; "
                f"got {type(pl_module).__name__}"
            )
        pl_module.keep_evaluation_plots = True

    def _flush(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plots = getattr(pl_module, "evaluation_plots", {})
        due = trainer.sanity_checking is False and (
            trainer.current_epoch % self.every_n_epochs == 0 or trainer.state.fn != "fit"
        )
        if trainer.is_global_zero and due:
            for set_key, figures in plots.items():
                for kind, fig in figures.items():
                    self.logged.extend(log_figure(trainer, f"{set_key}/{kind}", fig))
        plots.clear()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the figures of the validation that just ended."""
        self._flush(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the figures of the test run."""
        self._flush(trainer, pl_module)
