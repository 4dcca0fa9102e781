"""OODVisualization on tiny real runs with TensorBoard, CSV and offline wandb loggers."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from synthrel_lightning.callbacks import OODVisualization
from synthrel_lightning.callbacks.visualization import IMAGENET_MEAN, IMAGENET_STD, denormalize
from synthrel_lightning.labels import NUM_CLASSES, OOD_POSITIVE, VOID_ID

H, W = 16, 24


class _Frames(Dataset):
    """Normalised random images with a semantic label, an OOD square and a void strip."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rgb = torch.rand(n, 3, H, W, generator=g)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        label = torch.full((H, W), 0, dtype=torch.long)
        label[H // 2 :] = 13
        ood = torch.zeros(H, W, dtype=torch.long)
        ood[2:6, 2:6] = OOD_POSITIVE
        ood[:, -2:] = VOID_ID
        label[2:6, 2:6] = 254
        label[:, -2:] = VOID_ID
        return {"image": (self.rgb[i] - mean) / std, "label": label, "ood": ood, "name": f"frame_{i}"}


class _DM(L.LightningDataModule):
    val_set_names = ["synthetic_objects", "road_anomaly"]

    def train_dataloader(self):
        return DataLoader(_Frames(2, 0), batch_size=2)

    def val_dataloader(self):
        return [DataLoader(_Frames(3, 1), batch_size=2), DataLoader(_Frames(2, 2), batch_size=2)]


class _Seg(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, NUM_CLASSES, 3, padding=1)
        self.ood_score = "energy"

    def forward(self, x):
        return self.conv(x)

    def score(self, logits):
        return -torch.logsumexp(logits, 1)

    def training_step(self, batch, batch_idx):
        target = batch["label"].masked_fill(batch["label"] >= NUM_CLASSES, 255)
        return torch.nn.functional.cross_entropy(self(batch["image"]), target, ignore_index=255)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        names = self.trainer.datamodule.val_set_names
        self.log(f"val/{names[dataloader_idx]}/ap", float(batch_idx + dataloader_idx) / 10, add_dataloader_idx=False)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path, logger, cb, epochs: int = 1) -> None:
    L.Trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=[cb],
        default_root_dir=tmp_path,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=1,
    ).fit(_Seg(), datamodule=_DM())


def test_denormalize_inverts_imagenet_normalisation() -> None:
    rgb = torch.rand(3, 4, 5)
    norm = (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert np.abs(denormalize(norm).astype(int) - (rgb.permute(1, 2, 0).numpy() * 255).round().astype(int)).max() <= 1


def test_csv_logger_gets_pngs_with_four_tiles(tmp_path) -> None:
    cb = OODVisualization(num_images=2, set_names=["synthetic_objects"])
    _fit(tmp_path, CSVLogger(tmp_path, name="csv"), cb, epochs=2)
    pngs = sorted((tmp_path / "csv" / "version_0" / "images").glob("*.png"))
    # 2 epochs x 2 images of the selected set only (the sanity check is skipped).
    assert [p.name for p in pngs] == [f"val_synthetic_objects_epoch{e:03d}_{i}.png" for e in (0, 1) for i in (0, 1)]
    img = np.asarray(Image.open(pngs[0]))
    assert img.shape == (H, 4 * W + 3 * 4, 3)
    gt_tile = img[:, W + 4 : 2 * W + 4]
    assert (gt_tile[3, 3] == 255).all()  # OOD pixel white
    assert (gt_tile[0, -1] == 0).all()  # void pixel black
    assert tuple(gt_tile[H - 1, 8]) == (0, 0, 142)  # car colour


def test_tensorboard_gets_images_per_set(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(tmp_path, name="tb")
    cb = OODVisualization(num_images=3)
    _fit(tmp_path, tb, cb)
    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    acc.Reload()
    tags = sorted(acc.Tags()["images"])
    assert tags == sorted(
        [f"val/synthetic_objects/panel_{i}" for i in range(3)] + [f"val/road_anomaly/panel_{i}" for i in range(2)]
    )
    assert acc.Images(tags[0])[0].width == 4 * W + 12


def test_wandb_offline_gets_panels_masks_and_table(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="synthrel-test")
    cb = OODVisualization(num_images=1)
    try:
        _fit(tmp_path, logger, cb)
    finally:
        import wandb

        wandb.finish()
    assert "wandb:val/synthetic_objects/panels" in cb.logged and "wandb:val/metrics_table" in cb.logged
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    media = list((run_dirs[0] / "files" / "media").rglob("*"))
    names = [m.name for m in media if m.is_file()]
    assert any(n.endswith(".png") for n in names)
    assert any("metrics_table" in n and n.endswith(".table.json") for n in names)
    # Two mask overlays (ground truth, prediction) per overlay image, for each set.
    masks = [m for m in media if m.name.endswith(".mask.png") and "synthetic_objects" in str(m)]
    assert len(masks) == 2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_images must be >= 1"):
        OODVisualization(num_images=0)
