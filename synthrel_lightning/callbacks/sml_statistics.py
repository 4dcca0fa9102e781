"""Standardized-max-logit statistics from an eval-mode pass of the model over training images."""

from __future__ import annotations

import lightning as L


class SMLStatistics(L.Callback):
    """Fill a stateful OOD score's statistics (standardized max logit) during and at the end of ``fit``.

    Before each validation of ``fit`` (with the weights being validated, so each saved checkpoint
    holds statistics of its own weights) and at the end of training (the final weights), the model
    runs in eval mode over the training loader (Jung et al. 2021 compute them after training, in
    eval mode). ``max_batches`` bounds the passes before validations; the final pass uses
    ``final_max_batches`` (default: all training batches).
    """

    def __init__(self, max_batches: int | None = None, final_max_batches: int | None = None) -> None:
        self.max_batches = max_batches
        self.final_max_batches = final_max_batches

    @staticmethod
    def _compute(trainer: L.Trainer, pl_module: L.LightningModule, max_batches: int | None) -> None:
        compute = getattr(pl_module, "compute_score_statistics", None)
        if compute is None:
            return
        loader = trainer.train_dataloader
        if loader is None:
            datamodule = getattr(trainer, "datamodule", None)  # set by the Trainer at run time, not declared
            if datamodule is None:
                raise RuntimeError(
                    "SMLStatistics: the trainer has no training loader yet and no datamodule to build one from; "
                    "fit with a datamodule"
                )
            loader = datamodule.train_dataloader()
        device_batches = (pl_module.transfer_batch_to_device(batch, pl_module.device, 0) for batch in loader)
        compute(device_batches, max_batches=max_batches)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Statistics of the weights about to be validated (only while fitting)."""
        if trainer.state.fn == "fit":
            self._compute(trainer, pl_module, self.max_batches)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Statistics of the final weights."""
        self._compute(trainer, pl_module, self.final_max_batches)
