"""OutlierBankRefresh: a real Trainer keeps training while a background process grows the bank."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from synthrel_lightning.callbacks.epoch_sync import DataEpochSync
from synthrel_lightning.data.keyed import KeyedDataset
from synthrel_lightning.data.transforms import SegmentationTransform
from synthrel_lightning.synthesis.bank import OutlierBank
from synthrel_lightning.synthesis.mixing import OutlierMixer
from synthrel_lightning.synthesis.refresh import OutlierBankRefresh
from synthrel_lightning.synthesis.sources import BankSource, ProceduralObjectSource, ProducerSpec, fill_bank


class Frames(Dataset):
    """Tiny raw samples."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        label = np.zeros((32, 32), np.uint8)
        return {"image": np.full((32, 32, 3), 10 * i, np.uint8), "label": label, "ood": label.copy(), "name": f"f{i}"}


class TinySegmenter(L.LightningModule):
    """A 1x1-conv segmenter; ignores 254/255 like the project's CE."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 1)
        self.seen_ood = 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen_ood += int((batch["ood"] == 1).sum())
        logits = self.conv(batch["image"])
        target = batch["label"].masked_fill(batch["label"] >= 19, 255)
        return F.cross_entropy(logits, target, ignore_index=255)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_refresh_grows_the_bank_during_training(tmp_path: Path) -> None:
    root = tmp_path / "bank"
    fill_bank(ProceduralObjectSource(size_range=(8, 16)), OutlierBank(root), 3, seed=0)
    source = BankSource(root)
    ds = KeyedDataset(
        Frames(),
        transform=SegmentationTransform(seed=0),
        mixer=OutlierMixer(source, probability=1.0, size_range=(0.3, 0.5)),
    )
    spec = ProducerSpec("synthrel_lightning.synthesis.sources.ProceduralObjectSource", {"size_range": (8, 16)})
    refresh = OutlierBankRefresh(
        spec, root, refresh_fraction=0.0, min_per_epoch=4, max_pending=2, wait_on_fit_end_s=120
    )
    broken = OutlierBankRefresh(
        ProducerSpec("synthrel_lightning.synthesis.no_such_module.Producer"),
        tmp_path / "other",
        min_per_epoch=2,
        log_name="other_bank",
    )
    module = TinySegmenter()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[DataEpochSync(), refresh, broken],
    )
    trainer.fit(module, DataLoader(ds, batch_size=4, num_workers=0))
    assert trainer.state.finished
    assert module.seen_ood > 0
    # Two epochs x 4 new outliers, each epoch's items under its own keys.
    assert OutlierBank(root, mode="r").refresh() == 3 + 8
    assert refresh.totals["launched"] == 2 and refresh.totals["produced"] == 8 and refresh.totals["crashed_jobs"] == 0
    assert refresh.pending == 0 and OutlierBank(root).temp_files() == []
    # A producer that cannot even be built is counted, and training still finished.
    assert broken.totals["crashed_jobs"] >= 1 and broken.totals["produced"] == 0
    assert broken.pending == 0
    assert trainer.callback_metrics["train/bank_size"] >= 3
    # Logged at epoch starts, before the broken job's end is known: present, under its own name.
    assert "train/other_bank_failures" in trainer.callback_metrics
    # The mixer picked up entries generated during epoch 0 at the start of epoch 1 (if done by then).
    assert len(source) >= 3


class WaitingSegmenter(TinySegmenter):
    """Its first training step waits until the background job has committed ``n`` entries to ``bank``."""

    def __init__(self, bank: Path, n: int) -> None:
        super().__init__()
        self.bank, self.n, self.waited = bank, n, False

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        deadline = time.monotonic() + 240
        while not self.waited and OutlierBank(self.bank, mode="a").refresh() < self.n:
            assert time.monotonic() < deadline, "the background producer wrote nothing in 240 s"
            time.sleep(0.1)
        self.waited = True
        return super().training_step(batch, batch_idx)


def test_refresh_logs_the_progress_of_running_jobs(tmp_path: Path) -> None:
    """Entries and failures of a job still running at the epoch's end are in the logged counts (not 0)."""
    root = tmp_path / "bank"
    spec = ProducerSpec("synthrel_lightning.testing.FaultySource", {"fail_calls": [1], "delay_s": 0.5})
    refresh = OutlierBankRefresh(spec, root, refresh_fraction=0.0, min_per_epoch=40, wait_on_fit_end_s=0)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[refresh],
    )
    trainer.fit(WaitingSegmenter(root, 3), DataLoader(Frames(), batch_size=4, collate_fn=_collate_raw))
    assert trainer.callback_metrics["train/bank_generated"] >= 3
    assert trainer.callback_metrics["train/bank_failures"] >= 1
    assert refresh.pending == 0 and OutlierBank(root).temp_files() == []


def _collate_raw(items: list[dict]) -> dict:
    image = torch.stack([torch.from_numpy(it["image"]).permute(2, 0, 1).float() / 255 for it in items])
    label = torch.stack([torch.from_numpy(it["label"]).long() for it in items])
    return {"image": image, "label": label, "ood": label.clone()}
