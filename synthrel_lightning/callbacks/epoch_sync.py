"""Keeps epoch-keyed data in step with the trainer's epoch (also after a resume) and logs skipped frames."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class DataEpochSync(Callback):
    """Calls ``set_epoch(epoch)`` on the datamodule (or train datasets) before each epoch; logs skip counts.

    The DataModules key every random draw by ``(seed, epoch, index)``, so a resumed run sees
    the same data; their sampler also receives Lightning's own ``set_epoch``, so this callback
    matters for datasets used outside them. A datamodule with ``skipped_counts()`` (see
    :meth:`~synthrel_lightning.data.datamodule.SegmentationDataModule.skipped_counts`) has
    the number of frames each set left out logged as ``data/<set>/skipped`` at the end of every
    training and validation epoch. Skips are decided once per run, identically on every
    process, so the logged value is the count over the whole set (not a per-process share).
    """

    def _sync(self, trainer: L.Trainer) -> None:
        epoch = trainer.current_epoch
        dm = getattr(trainer, "datamodule", None)  # set by the Trainer at run time, not declared on its class
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
            if ds is not None and hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def _log_skips(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = getattr(getattr(trainer, "datamodule", None), "skipped_counts", None)
        if not callable(counts):
            return
        for name, n in counts().items():
            pl_module.log(f"data/{name}/skipped", float(n), on_step=False, on_epoch=True, sync_dist=False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sync at the start of fitting (covers a resume in the middle of an epoch)."""
        self._sync(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sync before every epoch's dataloader iterator is created."""
        self._sync(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the skip counts with the epoch's metrics."""
        self._log_skips(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the skip counts with the validation metrics (``validate`` runs too)."""
        if not trainer.sanity_checking:
            self._log_skips(trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the skip counts with the test metrics."""
        self._log_skips(trainer, pl_module)
