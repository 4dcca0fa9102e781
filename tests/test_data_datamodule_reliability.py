"""DataModules under stress: skipped frames removed and counted, stage-only splits, roots never written, mixed sizes."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from synthrel_lightning.data import (
    CityscapesOODDataModule,
    DatasetError,
    DemoDataModule,
    SegmentationDataModule,
    collate_samples,
    eval_transform,
    write_demo_cityscapes,
)
from synthrel_lightning.labels import VOID_ID
from synthrel_lightning.models import OODSegmenter, TinySegmenter


class Names(Callback):
    """Every frame name served to validation and training steps."""

    def __init__(self) -> None:
        self.val: list[str] = []
        self.train: list[str] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        if not trainer.sanity_checking:
            self.val += batch["name"]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.train += batch["name"]


def _model() -> OODSegmenter:
    return OODSegmenter(TinySegmenter(num_classes=19, width=4, depth=1), ood_score="msp", summary=False)


def _trainer(tmp: Path, *callbacks: Callback, **kwargs) -> L.Trainer:  # type: ignore[no-untyped-def]
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp,
        callbacks=list(callbacks),
        **kwargs,
    )


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_skip_removes_frames_that_fail_to_decode_and_logs_the_counts(tmp_path: Path) -> None:
    root = write_demo_cityscapes(tmp_path / "cs", num_train=6, num_val=4, size=(48, 96), seed=1)
    val_images = sorted((root / "leftImg8bit" / "val").rglob("*.png"))
    train_images = sorted((root / "leftImg8bit" / "train").rglob("*.png"))
    _truncate(val_images[1])
    _truncate(train_images[0])
    bad_val = val_images[1].name.replace("_leftImg8bit.png", "")
    dm = CityscapesOODDataModule(
        root,
        on_error="skip",
        crop_size=(32, 64),
        scale_range=(1.0, 1.0),
        batch_size=2,
        eval_batch_size=2,
        num_workers=2,  # decided at setup: the count does not stay in the workers
        pin_memory=False,
    )
    names = Names()
    trainer = _trainer(tmp_path, names, max_epochs=1)
    trainer.fit(_model(), datamodule=dm)
    # Every good frame exactly once, the bad one never, nothing served twice.
    assert len(names.val) == 3 and len(set(names.val)) == 3 and bad_val not in names.val
    assert len(names.train) == 4 and len(set(names.train)) == 4  # 5 good frames, drop_last with batch 2
    assert dm.skipped_counts() == {"train": 1, "cityscapes": 1}
    assert trainer.callback_metrics["data/cityscapes/skipped"].item() == 1.0
    assert trainer.callback_metrics["data/train/skipped"].item() == 1.0
    # validate alone logs them too.
    validated = _trainer(tmp_path)
    validated.validate(_model(), datamodule=dm)
    assert validated.callback_metrics["data/cityscapes/skipped"].item() == 1.0


def test_validate_needs_only_the_validation_split(cityscapes_mini: Path) -> None:
    dm = CityscapesOODDataModule(cityscapes_mini, eval_size=(64, 128), num_workers=0, pin_memory=False)
    dm.setup("validate")  # a val-only root: no leftImg8bit/train needed
    (loader,) = dm.val_dataloader()
    batch = next(iter(loader))
    assert batch["image"].shape == (1, 3, 64, 128) and batch["name"] == ["frankfurt_000000_000294"]
    with pytest.raises(DatasetError, match="leftImg8bit/train"):
        dm.setup("fit")


def test_a_dataset_root_is_never_written(tmp_path: Path, cityscapes_mini: Path) -> None:
    real = tmp_path / "real"
    shutil.copytree(cityscapes_mini, real)
    before = _snapshot(real)
    # The demo refuses a folder it does not own, before writing anything.
    with pytest.raises(DatasetError, match="files the demo did not write"):
        DemoDataModule(root=real, num_train=2, num_val=1).prepare_data()
    with pytest.raises(DatasetError, match="files the demo did not write"):
        _trainer(tmp_path, max_epochs=1).fit(_model(), datamodule=DemoDataModule(root=real, num_train=2, num_val=1))
    assert _snapshot(real) == before
    # Fitting and validating on the real root read it only.
    dm = CityscapesOODDataModule(
        real,
        train_split="val",
        crop_size=(64, 128),
        scale_range=(0.0625, 0.0625),
        eval_size=(64, 128),
        batch_size=1,
        num_workers=0,
        pin_memory=False,
    )
    trainer = _trainer(tmp_path, max_epochs=1)
    model = _model()
    trainer.fit(model, datamodule=dm)
    trainer.validate(model, datamodule=dm)
    assert _snapshot(real) == before


def test_the_demo_writes_only_into_its_own_folder(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    write_demo_cityscapes(root, num_train=2, num_val=1, size=(32, 64))
    assert (root / ".synthrel-demo.json").is_file()
    write_demo_cityscapes(root, num_train=3, num_val=1, size=(32, 64))  # more frames: resumes
    assert len(list((root / "leftImg8bit" / "train").rglob("*.png"))) == 3
    with pytest.raises(DatasetError, match="written with"):
        write_demo_cityscapes(root, num_train=2, num_val=1, size=(48, 64))
    # A demo folder written before the marker existed holds only demo files: it is adopted.
    (root / ".synthrel-demo.json").unlink()
    write_demo_cityscapes(root, num_train=3, num_val=1, size=(32, 64))
    assert (root / ".synthrel-demo.json").is_file()
    (root / "notes.txt").write_text("mine")
    (root / ".synthrel-demo.json").unlink()
    with pytest.raises(DatasetError, match="did not write"):
        write_demo_cityscapes(root, num_train=4, num_val=1, size=(32, 64))
    assert len(list((root / "leftImg8bit" / "train").rglob("*.png"))) == 3


def _frames(sizes: list[tuple[int, int]]) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate(sizes):
        label = rng.integers(0, 19, (h, w), dtype=np.uint8)
        ood = (rng.random((h, w)) < 0.1).astype(np.uint8)
        label[ood == 1] = 254
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        out.append({"image": image, "label": label, "ood": ood, "name": f"f{i}"})
    return out


def test_collate_pads_frames_of_different_sizes_with_void() -> None:
    t = eval_transform()
    samples = [t(s) for s in _frames([(40, 60), (48, 64), (40, 50)])]
    batch = collate_samples(samples)
    assert batch["image"].shape == (3, 3, 48, 64) and batch["label"].shape == (3, 48, 64)
    assert batch["size"].tolist() == [[40, 60], [48, 64], [40, 50]]
    assert torch.equal(batch["image"][0, :, :40, :60], samples[0]["image"])
    assert (batch["label"][0, 40:] == VOID_ID).all() and (batch["ood"][2, :, 50:] == VOID_ID).all()
    assert (batch["image"][2, :, :, 50:] == 0).all()
    assert batch["name"] == ["f0", "f1", "f2"]


def test_mixed_size_evaluation_set_gives_the_same_metrics_at_any_batch_size(tmp_path: Path) -> None:
    """Padding is void: a per-pixel model scores a mixed-size set identically one by one or four at a time."""
    frames = _frames([(40, 60), (48, 64), (40, 50), (48, 64)])

    def metrics(batch_size: int) -> dict[str, float]:
        torch.manual_seed(0)
        model = OODSegmenter(torch.nn.Conv2d(3, 19, 1), ood_score="msp", summary=False)
        dm = SegmentationDataModule(
            val_sets={"mixed": frames}, eval_transform=eval_transform(), eval_batch_size=batch_size, num_workers=0
        )
        trainer = _trainer(tmp_path)
        trainer.validate(model, datamodule=dm)
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/mixed/")}

    one, four = metrics(1), metrics(4)
    assert {"val/mixed/miou", "val/mixed/ap"} <= one.keys() and one.keys() == four.keys()
    for key, value in one.items():
        assert math.isclose(value, four[key], rel_tol=1e-5, abs_tol=1e-6) or (
            math.isnan(value) and math.isnan(four[key])
        ), key


def test_one_benchmark_is_added_by_dotted_cli_overrides(
    tmp_path: Path, road_anomaly_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--data.init_args.extra_val_sets.<name>=<class>`` + ``.<name>.<arg>=...``: no overlay file needed."""
    from synthrel_lightning.cli import DEMO_CONFIG, main

    monkeypatch.chdir(tmp_path)
    main(
        [
            "validate",
            "--config",
            str(DEMO_CONFIG),
            f"--data.init_args.root={tmp_path / 'demo'}",
            "--data.init_args.num_train=2",
            "--data.init_args.num_val=1",
            "--data.init_args.extra_val_sets.road_anomaly=synthrel_lightning.data.RoadAnomalyDataset",
            f"--data.init_args.extra_val_sets.road_anomaly.root={road_anomaly_root}",
            "--data.init_args.extra_val_sets.road_anomaly.max_samples=2",
            "--data.init_args.eval_batch_size=2",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path / 'logs'}",
            "--trainer.callbacks=[]",
        ]
    )
    (metrics_file,) = (tmp_path / "logs").rglob("metrics.csv")
    header = metrics_file.read_text().splitlines()[0].split(",")
    assert "val/road_anomaly/ap" in header and "data/road_anomaly/skipped" in header
