"""The DataModule's OOD label option (for losses that ignore only 255) and the demo's held-out OOD set by default."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from synthrel_lightning.data import DemoDataModule
from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.synthesis import OutlierMixer, ProceduralObjectSource

TINY = {"num_train": 4, "num_val": 2, "image_size": (64, 128), "crop_size": (64, 128), "batch_size": 2}


class PlainModule(L.LightningModule):
    """A user's own module: cross-entropy that ignores void (255) only, as most segmentation code does."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Conv2d(3, 19, 1)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.net(batch["image"]), batch["label"], ignore_index=255)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _data(tmp_path: Path, **kwargs) -> DemoDataModule:
    mixer = OutlierMixer(ProceduralObjectSource(), probability=1.0)
    return DemoDataModule(root=tmp_path / "demo", outliers=mixer, **TINY, **kwargs)


def test_default_batches_carry_the_ood_label_and_a_255_only_loss_breaks_on_them(tmp_path: Path) -> None:
    data = _data(tmp_path)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert (batch["label"] == OOD_ID).any()
    with pytest.raises((IndexError, RuntimeError)):
        F.cross_entropy(torch.zeros(*batch["label"].shape[:1], 19, *batch["label"].shape[1:]), batch["label"])


def test_remap_ood_to_void_lets_a_plain_module_train(tmp_path: Path) -> None:
    data = _data(tmp_path, remap_ood_to=VOID_ID)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert not (batch["label"] == OOD_ID).any()
    assert (batch["ood"] == 1).any() and (batch["label"][batch["ood"] == 1] == VOID_ID).all()
    for loader in data.val_dataloader():
        for val_batch in loader:
            assert not (val_batch["label"] == OOD_ID).any()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(PlainModule(), train_dataloaders=data.train_dataloader())
    assert trainer.state.finished


def test_remap_ood_to_rejects_a_train_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="remap_ood_to"):
        _data(tmp_path, remap_ood_to=3)


def test_the_demo_module_serves_its_held_out_ood_set_by_default(tmp_path: Path) -> None:
    """The quick tour reads val/demo_objects/ap after DemoDataModule(outliers=...) without val_outliers."""
    data = _data(tmp_path)
    assert data.val_set_names == ["demo", "demo_objects"]
    assert _data(tmp_path, val_outliers=False).val_set_names == ["demo"]
