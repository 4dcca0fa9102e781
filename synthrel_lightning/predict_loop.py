"""The pieces every offline generation run shares: a Lightning predict loop over work items kept on the host.

:class:`HostItemsDataModule` serves ``self.items`` (listed in ``setup``) as list batches in a fixed
order, :class:`BatchPredictionWriter` writes each batch's predictions as it comes, and
:func:`predict_trainer` builds the logger-free, checkpoint-free Trainer that runs them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

__all__ = ["BatchPredictionWriter", "HostItemsDataModule", "collate_list", "predict_trainer"]

log = logging.getLogger(__name__)


def collate_list(items: list[Any]) -> list[Any]:
    """Keep a batch a list: frames may differ in size and items carry Python objects."""
    return items


class HostItemsDataModule(L.LightningDataModule):
    """Base for predict-only generation: ``self.items`` (built in ``setup``) served in a fixed order, on the host."""

    items: Dataset | None
    batch_size: int
    num_workers: int

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        """Keep items on the host: the pipeline moves what it needs to its own device."""
        return batch

    def log_pending(self, command: str, where: object) -> None:
        """Log how many of ``self.items``' total are still to do (the rest is already in ``where``)."""
        items: Any = self.items
        pending, total = len(items), items.total
        log.info("%s: %d of %d items to do (%d already done in %s)", command, pending, total, total - pending, where)

    def predict_dataloader(self) -> DataLoader:
        """Items in a fixed order (Lightning adds a distributed sampler under DDP)."""
        if self.items is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run: no work items yet")
        return DataLoader(
            self.items, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers, collate_fn=collate_list
        )


class BatchPredictionWriter(BasePredictionWriter):
    """A prediction writer called once per batch: subclasses implement :meth:`write_batch`."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")

    def write_batch(self, prediction: Any, batch_idx: int) -> None:
        """Write the predictions of batch ``batch_idx``."""
        raise NotImplementedError

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Hand the batch's predictions to :meth:`write_batch`."""
        self.write_batch(prediction, batch_idx)


def predict_trainer(
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    callbacks: list[L.Callback] | None = None,
    progress: bool = True,
    limit_predict_batches: int | float | None = None,
) -> L.Trainer:
    """A Trainer for a generation predict loop: no logger, no checkpoints, no model summary."""
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_predict_batches=limit_predict_batches,
    )
