"""Keeps epoch-seeded datasets in step with the trainer's epoch (also after a resume)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class DataEpochSync(Callback):
    """Calls ``set_epoch(epoch)`` on the datamodule (or train datasets) before each epoch's iteration.

    Synthetic outliers are drawn from generators keyed by the epoch, so a resumed
    run sees the same data. Train loaders must not use persistent workers (their
    copies of the dataset would not see the new epoch).
    """

    def _sync(self, trainer: L.Trainer) -> None:
        epoch = trainer.current_epoch
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(epoch)
            return
        loaders = trainer.train_dataloader
        if loaders is None:
            return
        for loader in (
            loaders.values()
            if isinstance(loaders, dict)
            else (loaders if isinstance(loaders, (list, tuple)) else [loaders])
        ):
            ds = getattr(loader, "dataset", None)
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sync at the start of fitting (covers a resume in the middle of an epoch)."""
        self._sync(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sync before every epoch's dataloader iterator is created."""
        self._sync(trainer)
