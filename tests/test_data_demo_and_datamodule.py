"""The demo scene writer and the DataModules, through the public API."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from synthrel_lightning.data import CityscapesDataset, CityscapesOODDataModule, DemoDataModule, write_demo_cityscapes
from synthrel_lightning.labels import LABEL_IDS, OOD_ID, VOID_ID
from synthrel_lightning.synthesis import OutlierMixer, ProceduralObjectSource


def test_demo_scenes_are_valid_cityscapes_and_resumable(tmp_path: Path) -> None:
    root = write_demo_cityscapes(tmp_path / "cs", num_train=4, num_val=2, size=(64, 128), seed=3)
    labels = sorted((root / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))
    assert len(labels) == 4
    values = np.unique(np.concatenate([np.unique(np.asarray(Image.open(p))) for p in labels]))
    assert set(values.tolist()) <= LABEL_IDS
    assert {7, 8, 23}.issubset(values.tolist())  # road, sidewalk, sky in every scene set
    # The official loader reads them.
    ds = CityscapesDataset(root, split="val")
    assert len(ds) == 2 and ds[0]["image"].shape == (64, 128, 3)
    # Resume: a deleted frame is rewritten identically, the others are kept.
    first = labels[0]
    before = first.read_bytes()
    first.unlink()
    mtime = labels[1].stat().st_mtime_ns
    write_demo_cityscapes(root, num_train=4, num_val=2, size=(64, 128), seed=3)
    assert first.read_bytes() == before
    assert labels[1].stat().st_mtime_ns == mtime


def _mixer(p: float, seed: int) -> OutlierMixer:
    return OutlierMixer(ProceduralObjectSource(size_range=(8, 24)), probability=p, num_objects=(1, 2), seed=seed)


def test_demo_datamodule_in_a_plain_loop(tmp_path: Path) -> None:
    from synthrel_lightning.data import eval_transform

    # A deterministic training transform isolates the seeded outlier draws from random augmentation.
    dm = DemoDataModule(
        root=tmp_path / "demo",
        num_train=8,
        num_val=4,
        image_size=(64, 128),
        crop_size=(64, 128),
        train_transform=eval_transform(),
        batch_size=4,
        eval_batch_size=2,
        outliers=_mixer(1.0, 0),
        val_outliers=_mixer(1.0, 99),
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.val_set_names == ["demo", "demo_objects"]
    dm.set_epoch(0)
    batch0 = next(iter(torch.utils.data.DataLoader(dm._train, batch_size=8)))
    assert batch0["image"].shape == (8, 3, 64, 128) and batch0["image"].dtype == torch.float32
    assert batch0["label"].dtype == torch.int64
    ood_pixels = batch0["label"] == OOD_ID
    assert ood_pixels.any(), "probability 1.0 must paste outliers"
    # The binary OOD target agrees with the semantic one.
    assert torch.equal(batch0["ood"] == 1, ood_pixels)
    # Same epoch -> same draws; another epoch -> other draws.
    again = next(iter(torch.utils.data.DataLoader(dm._train, batch_size=8)))
    assert torch.equal(again["label"], batch0["label"])
    dm.set_epoch(1)
    other = next(iter(torch.utils.data.DataLoader(dm._train, batch_size=8)))
    assert not torch.equal(other["label"], batch0["label"])
    # Evaluation sets: clean demo frames have no OOD pixels, the objects set has them.
    clean, objects = dm.val_dataloader()
    clean_batch, obj_batch = next(iter(clean)), next(iter(objects))
    assert not (clean_batch["ood"] == 1).any()
    assert (obj_batch["ood"] == 1).any()
    assert ((obj_batch["ood"] == VOID_ID) == (obj_batch["label"] == VOID_ID)).all()


def test_cityscapes_datamodule_extra_sets_and_errors(
    tmp_path: Path, cityscapes_mini: Path, road_anomaly_root: Path
) -> None:
    from synthrel_lightning.data import RoadAnomalyDataset

    dm = CityscapesOODDataModule(
        root=cityscapes_mini,
        train_split="val",
        val_split="val",
        crop_size=(64, 128),
        eval_size=(128, 256),
        extra_val_sets={"road_anomaly": RoadAnomalyDataset(road_anomaly_root, max_samples=2)},
        batch_size=1,
        num_workers=0,
    )
    dm.setup("fit")
    assert dm.val_set_names == ["cityscapes", "road_anomaly"]
    assert dm.test_set_names == dm.val_set_names
    loaders = dm.val_dataloader()
    ra = next(iter(loaders[1]))
    assert ra["image"].shape == (1, 3, 128, 256)
    assert set(ra["ood"].unique().tolist()) <= {0, 1, VOID_ID}
    bad = CityscapesOODDataModule(root=cityscapes_mini, train_split="val", predict_set="nope")
    bad.setup()
    with pytest.raises(ValueError, match="predict_set 'nope'"):
        bad.predict_dataloader()
    with pytest.raises(ValueError, match="collides"):
        CityscapesOODDataModule(
            root=cityscapes_mini, extra_val_sets={"cityscapes": RoadAnomalyDataset(road_anomaly_root)}
        )


@pytest.mark.parametrize("with_sync", [True, False], ids=["with-DataEpochSync", "plain-trainer"])
def test_datamodule_trains_with_a_foreign_lightning_module(tmp_path: Path, with_sync: bool) -> None:
    """The DataModule works unchanged with someone else's LightningModule, with or without the callback."""
    from synthrel_lightning.callbacks import DataEpochSync

    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Conv2d(3, 19, 1)
            self.epochs_seen: list[int] = []

        def training_step(self, batch, idx):
            self.epochs_seen.append(self.trainer.datamodule._train.epoch)
            return torch.nn.functional.cross_entropy(
                self.net(batch["image"]), batch["label"].masked_fill(batch["label"] >= 19, 255), ignore_index=255
            )

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = DemoDataModule(
        root=tmp_path / "demo",
        num_train=4,
        num_val=2,
        image_size=(64, 128),
        crop_size=(64, 128),
        batch_size=2,
        outliers=_mixer(0.5, 0),
    )
    module = Plain()
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        callbacks=[DataEpochSync()] if with_sync else [],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    assert module.epochs_seen == [0, 0, 1, 1]
