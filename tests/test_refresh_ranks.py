"""The outlier-bank refresh callback on two processes: the logged counts are the run's, not rank 0's share."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from synthrel_lightning.synthesis.bank import OutlierBank
from synthrel_lightning.synthesis.refresh import OutlierBankRefresh
from synthrel_lightning.synthesis.sources import ProducerSpec

PER_RANK = 2


class WaitsForTheBank(L.LightningModule):
    """Its first step waits until both processes' background jobs have committed their entries."""

    def __init__(self, bank: Path, n: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.bank, self.n = bank, n

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        deadline = time.monotonic() + 240
        while OutlierBank(self.bank, mode="a").refresh() < self.n:
            assert time.monotonic() < deadline, "the background producers wrote too little in 240 s"
            time.sleep(0.2)
        return self.layer(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.slow
def test_refresh_on_every_rank_logs_the_sum_over_ranks(tmp_path: Path) -> None:
    root = tmp_path / "bank"
    spec = ProducerSpec("synthrel_lightning.synthesis.sources.ProceduralObjectSource", {"size_range": (8, 16)})
    refresh = OutlierBankRefresh(
        spec, root, refresh_fraction=0.0, min_per_epoch=PER_RANK, all_ranks=True, wait_on_fit_end_s=120
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[refresh],
    )
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    trainer.fit(WaitsForTheBank(root, 2 * PER_RANK), data)
    assert len(OutlierBank(root)) == 2 * PER_RANK
    # Each process produced its own PER_RANK entries: the logged count is their sum.
    assert trainer.callback_metrics["train/bank_generated"] == 2 * PER_RANK
