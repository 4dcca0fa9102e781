"""OODVisualization on tiny real runs (TensorBoard, CSV, offline wandb), reading the EvaluationResult of the step."""

from __future__ import annotations

import os
import sys

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from synthrel_lightning.callbacks import OODVisualization
from synthrel_lightning.callbacks.visualization import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PANEL_TITLES,
    denormalize,
    panel_figure,
)
from synthrel_lightning.evaluation_result import EvaluationResult
from synthrel_lightning.labels import NUM_CLASSES, OOD_POSITIVE, VOID_ID
from synthrel_lightning.models import OODSegmenter

H, W = 16, 24
SETS = ["synthetic_objects", "road_anomaly"]


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
    val_set_names = SETS

    def train_dataloader(self):
        return DataLoader(_Frames(2, 0), batch_size=2)

    def val_dataloader(self):
        return [DataLoader(_Frames(3, 1), batch_size=2), DataLoader(_Frames(2, 2), batch_size=2)]


class _Conv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, NUM_CLASSES, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class _Segmenter(OODSegmenter):
    """An OODSegmenter whose validation_step returns the evaluation result the callback reads."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        super().validation_step(batch, batch_idx, dataloader_idx)
        self.seen_steps = getattr(self, "seen_steps", 0) + 1
        logits = self(batch["image"]).detach()
        return EvaluationResult(
            stage="val",
            set_name=SETS[dataloader_idx],
            batch_idx=batch_idx,
            dataloader_idx=dataloader_idx,
            images=batch["image"],
            logits=logits,
            score=self.score(logits).detach(),
            label=batch["label"],
            ood=batch["ood"],
            names=list(batch["name"]),
        )


class _Silent(OODSegmenter):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        super().validation_step(batch, batch_idx, dataloader_idx)


def _fit(tmp_path, logger, cb, epochs: int = 1, module=None):
    model = module or _Segmenter(_Conv(), ood_score="energy", summary=False, val_set_names=SETS)
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
    ).fit(model, datamodule=_DM())
    return model


def _set_scores(model: OODSegmenter, dataset: Dataset) -> np.ndarray:
    """Every valid score pixel of a set, computed independently of the callback."""
    model.eval()
    values = []
    with torch.no_grad():
        for i in range(len(dataset)):
            s = dataset[i]
            score = model.score(model(s["image"][None]))[0]
            values.append(score[s["ood"] != VOID_ID].numpy())
    return np.concatenate(values)


def test_denormalize_inverts_imagenet_normalisation() -> None:
    rgb = torch.rand(3, 4, 5)
    norm = (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert np.abs(denormalize(norm).astype(int) - (rgb.permute(1, 2, 0).numpy() * 255).round().astype(int)).max() <= 1


def test_panel_figure_has_titles_one_colour_bar_and_the_given_range() -> None:
    rng = np.random.default_rng(0)
    samples = [
        {
            "image": rng.integers(0, 255, (H, W, 3), dtype=np.uint8),
            "gt": np.zeros((H, W), np.int64),
            "prediction": np.ones((H, W), np.int64),
            # Frames on very different scales: a per-frame rescale would give each its own limits.
            "score": rng.random((H, W)).astype(np.float32) * scale,
            "valid": np.ones((H, W), bool),
            "name": f"f{scale}",
        }
        for scale in (1.0, 100.0)
    ]
    fig = panel_figure(samples, (-2.0, 5.0), title="val/x")
    grid, colorbars = fig.axes[:8], fig.axes[8:]
    assert [ax.get_title() for ax in grid[:4]] == list(PANEL_TITLES)
    assert len(colorbars) == 1 and colorbars[0].get_ylim() == pytest.approx((-2.0, 5.0))
    score_images = [grid[3].images[0], grid[7].images[0]]
    assert [im.get_clim() for im in score_images] == [(-2.0, 5.0), (-2.0, 5.0)]


def test_csv_run_writes_png_svg_pdf_with_a_fixed_range_per_set(tmp_path) -> None:
    cb = OODVisualization(num_images=2, set_names=["synthetic_objects"], range_quantiles=(0.0, 1.0))
    model = _fit(tmp_path, CSVLogger(tmp_path, name="csv", version="run"), cb, epochs=2)
    assert model.seen_steps > 0
    files = sorted(p.name for p in (tmp_path / "csv" / "run" / "images").iterdir())
    # 2 epochs of the selected set only (the sanity check is skipped), in three formats.
    assert files == [f"val_synthetic_objects_epoch{e:03d}.{x}" for e in (0, 1) for x in ("pdf", "png", "svg")]
    png = np.asarray(Image.open(tmp_path / "csv" / "run" / "images" / "val_synthetic_objects_epoch001.png"))
    assert png.ndim == 3 and png.shape[0] > 2 * H and png.shape[1] > 4 * W
    svg = (tmp_path / "csv" / "run" / "images" / "val_synthetic_objects_epoch001.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    # The range spans the whole set (min..max of every valid pixel of all 3 frames), not one frame.
    expected = _set_scores(model, _Frames(3, 1))
    assert cb.ranges["synthetic_objects"] == pytest.approx((expected.min(), expected.max()), rel=1e-5)


def test_configured_range_per_set_is_used(tmp_path) -> None:
    cb = OODVisualization(num_images=1, score_range={"synthetic_objects": (-9.0, -1.0), "road_anomaly": (0.0, 4.0)})
    _fit(tmp_path, CSVLogger(tmp_path, name="csv", version="run"), cb)
    assert cb.ranges == {"synthetic_objects": (-9.0, -1.0), "road_anomaly": (0.0, 4.0)}


def test_tensorboard_gets_one_panel_figure_per_set(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(tmp_path, name="tb")
    cb = OODVisualization(num_images=3, formats=())
    _fit(tmp_path, tb, cb)
    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    acc.Reload()
    assert sorted(acc.Tags()["images"]) == sorted(f"val/{s}/panels" for s in SETS)
    assert not (tmp_path / "tb" / "version_0" / "images").exists()


def test_wandb_offline_gets_panels_masks_and_table(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="synthrel-test")
    cb = OODVisualization(num_images=1, formats=("png",))
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
    # Files land in the run's own folder (<save_dir>/<project>/<run id>/images), not in save_dir.
    pngs = list((tmp_path / "synthrel-test").glob("*/images/val_synthetic_objects_epoch000.png"))
    assert len(pngs) == 1 and os.path.getsize(pngs[0]) > 0


def test_a_step_without_evaluation_result_is_reported(tmp_path) -> None:
    module = _Silent(_Conv(), summary=False, val_set_names=SETS)
    with pytest.raises(TypeError, match=r"reads the EvaluationResult returned by val_step.*returned NoneType"):
        _fit(tmp_path, CSVLogger(tmp_path, name="csv"), OODVisualization(), module=module)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_images must be >= 1"):
        OODVisualization(num_images=0)
    with pytest.raises(ValueError, match="score_range must be"):
        OODVisualization(score_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="range_quantiles"):
        OODVisualization(range_quantiles=(0.9, 0.1))


def test_a_set_name_that_would_leave_the_run_folder_is_refused(tmp_path, monkeypatch) -> None:
    # A module of the user's own whose evaluation results carry a set name with path steps.
    module = _Segmenter(_Conv(), ood_score="energy", summary=False, val_set_names=SETS)
    monkeypatch.setattr(sys.modules[__name__], "SETS", ["x/../../../../escaped", "road_anomaly"])
    cb = OODVisualization(num_images=1, formats=("png",))
    with pytest.raises(ValueError, match=r"validation set name 'x/\.\./\.\./\.\./\.\./escaped'.*file or folder name"):
        _fit(tmp_path / "runs", CSVLogger(tmp_path / "runs", name="csv", version="run"), cb, module=module)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all((tmp_path / "runs" / "csv" / "run") in p.parents for p in written), written
