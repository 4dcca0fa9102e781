"""Two-process (gloo, CPU) training and validation: metrics are dataset-level, the same as one process."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from synthrel_lightning.data import DemoDataModule, eval_transform
from synthrel_lightning.models import OODSegmenter, TinySegmenter
from synthrel_lightning.synthesis import OutlierMixer, ProceduralObjectSource


def _data(root: Path) -> DemoDataModule:
    return DemoDataModule(
        root=root,
        num_train=8,
        num_val=5,
        image_size=(64, 128),
        crop_size=(64, 128),
        train_transform=eval_transform(),
        batch_size=2,
        eval_batch_size=1,
        outliers=OutlierMixer(ProceduralObjectSource(size_range=(8, 20)), probability=0.7, seed=0),
        val_outliers=OutlierMixer(ProceduralObjectSource(size_range=(8, 20)), probability=1.0, seed=5),
    )


EPOCHS = 4
KEYS = ("val/demo/miou", "val/demo/ece", "val/demo_objects/ap", "val/demo_objects/auroc", "val/demo_objects/fpr95")


def _validate(
    root: Path, tmp: Path, devices: int, ckpt: Path | None, frames: list[int] | None = None
) -> dict[str, float]:
    """Validation metrics of the checkpoint; ``frames`` restricts both sets to those frames (one process)."""
    L.seed_everything(0)
    model = OODSegmenter(TinySegmenter(width=8), summary=False, val_set_names=["demo", "demo_objects"])
    if ckpt is not None:
        model.load_state_dict(torch.load(ckpt, weights_only=True))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp,
    )
    data = _data(root)
    if frames is None:
        out = trainer.validate(model, datamodule=data, verbose=False)
    else:
        data.setup("validate")
        loaders = [
            torch.utils.data.DataLoader(torch.utils.data.Subset(loader.dataset, frames), batch_size=1)
            for loader in data.val_dataloader()
        ]
        out = trainer.validate(model, dataloaders=loaders, verbose=False)
    return {k: float(v) for d in out for k, v in d.items()}


@pytest.mark.timeout(900)
def test_two_process_validation_matches_one_process(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    _data(root).prepare_data()
    # One short two-process fit (DDP gradient sync, epoch-keyed outliers on both ranks).
    L.seed_everything(0)
    # Trained enough that the five frames' metrics differ: averaging per process would show.
    model = OODSegmenter(TinySegmenter(width=8), summary=False, optimizer=partial(torch.optim.AdamW, lr=0.01))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=_data(root))
    ckpt = tmp_path / "weights.pt"
    torch.save(model.state_dict(), ckpt)
    # The same weights validated by one and by two processes give the same dataset-level metrics
    # (5 frames over 2 processes: each frame is seen exactly once, states are summed, not averaged).
    one = _validate(root, tmp_path, 1, ckpt)
    two = _validate(root, tmp_path, 2, ckpt)
    # What each process sees (frames 0, 2, 4 and 1, 3): averaging their metrics is far from the dataset's.
    shards = [_validate(root, tmp_path, 1, ckpt, frames) for frames in ([0, 2, 4], [1, 3])]
    for key in KEYS:
        assert key in one and key in two, key
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
        averaged = (shards[0][key] + shards[1][key]) / 2
        assert abs(averaged - one[key]) > 1e-4, (key, averaged, one[key])  # 10x the tolerance above
