"""A progress bar for generation: items (not batches), with the done/failed/rejected counts as they change."""

from __future__ import annotations

import logging
import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["GenerationProgress"]

log = logging.getLogger(__name__)


class GenerationProgress(Callback):
    """Shows a tqdm bar over this rank's work items (on rank 0) and logs a line every ``log_every`` batches.

    Lightning's own bar counts batches and says nothing of outcomes; with one batch taking minutes
    at the paper's settings, the per-item counts are what tells a user the run is healthy.
    """

    def __init__(self, writer: Any, enabled: bool = True, log_every: int = 10) -> None:
        self.writer = writer
        self.enabled = enabled
        self.log_every = max(1, int(log_every))
        self._bar: Any = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Open the bar sized to this rank's items."""
        total = sum(len(dl.dataset) for dl in _loaders(trainer))
        if trainer.world_size > 1:
            total = -(-total // trainer.world_size)
        if self.enabled and trainer.is_global_zero:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="item", desc="generate", file=sys.stderr, dynamic_ncols=True)

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Advance by the batch's items and show the counts."""
        counts = dict(self.writer.counts)
        if self._bar is not None:
            self._bar.update(len(batch))
            self._bar.set_postfix(counts, refresh=True)
        if (batch_idx + 1) % self.log_every == 0:
            log.info("generate (rank %d): batch %d, %s", trainer.global_rank, batch_idx + 1, counts)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close the bar."""
        self.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Close the bar when the loop ends early (a stop request or an error)."""
        self.close()

    def close(self) -> None:
        """Close the bar if it is open."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _loaders(trainer: L.Trainer) -> list[Any]:
    loaders = trainer.predict_dataloaders
    if loaders is None:
        return []
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
