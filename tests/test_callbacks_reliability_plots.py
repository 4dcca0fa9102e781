"""Reliability diagrams and ROC/PR curves from dataset-level metric states, sent to loggers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from sklearn.metrics import roc_auc_score

from synthrel_lightning.callbacks import ReliabilityPlots
from synthrel_lightning.metrics import PixelOODMetrics
from synthrel_lightning.models import OODSegmenter, TinySegmenter


def test_curves_match_the_metric_values() -> None:
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(4, 32, 32, generator=g) < 0.1).long()
    scores = torch.randn(4, 32, 32, generator=g) + 1.5 * target
    for mode in ("binned", "exact"):
        m = PixelOODMetrics(mode=mode)
        m.update(scores, target)
        c = m.curves(max_points=100000)
        auroc = float(np.trapezoid(np.r_[0, c["tpr"].numpy()], np.r_[0, c["fpr"].numpy()]))
        assert auroc == pytest.approx(roc_auc_score(target.flatten(), scores.flatten()), abs=1e-3), mode
        assert c["tpr"][-1] == 1 and c["fpr"][-1] == 1
        assert len(m.curves(max_points=50)["fpr"]) <= 50
    empty = PixelOODMetrics()
    empty.update(scores, torch.zeros_like(target))
    with pytest.raises(ValueError, match="need OOD and in-distribution"):
        empty.curves()


class _Frames(torch.utils.data.Dataset):
    def __init__(self, with_ood: bool) -> None:
        self.with_ood = with_ood

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        label = torch.randint(0, 19, (32, 48), generator=g)
        ood = torch.zeros_like(label)
        image = torch.randn(3, 32, 48, generator=g)
        if self.with_ood:
            ood[8:16, 8:20] = 1
            image[:, 8:16, 8:20] += 2.0
        return {"image": image, "label": label, "ood": ood, "name": f"f{i}"}


class _Data(L.LightningDataModule):
    val_set_names = ["clean", "objects"]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(_Frames(False), batch_size=2)

    def val_dataloader(self):
        return [
            torch.utils.data.DataLoader(_Frames(False), batch_size=2),
            torch.utils.data.DataLoader(_Frames(True), batch_size=2),
        ]


@pytest.mark.parametrize("logger_kind", ["csv", "tensorboard"])
def test_plots_reach_the_logger(tmp_path: Path, logger_kind: str) -> None:
    logger = CSVLogger(tmp_path, name="run") if logger_kind == "csv" else TensorBoardLogger(tmp_path, name="run")
    plots = ReliabilityPlots()
    trainer = L.Trainer(
        max_epochs=1,
        logger=logger,
        callbacks=[plots],
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(OODSegmenter(TinySegmenter(width=8), summary=False), datamodule=_Data())
    if logger_kind == "csv":
        names = sorted(Path(p).name for p in plots.logged)
        assert names == [
            "val_clean_reliability_diagram_step000002.png",
            "val_objects_reliability_diagram_step000002.png",
            "val_objects_roc_pr_step000002.png",
        ]
        assert all(Path(p).stat().st_size > 1000 for p in plots.logged)
    else:
        assert plots.logged == ["tensorboard"] * 3
        assert list(Path(logger.log_dir).glob("events.out.tfevents*"))


def test_plots_need_an_ood_segmenter(tmp_path: Path) -> None:
    class Other(L.LightningModule):
        def training_step(self, batch, idx):  # pragma: no cover - never reached
            return None

        def configure_optimizers(self):  # pragma: no cover - never reached
            return None

    trainer = L.Trainer(max_epochs=1, logger=False, callbacks=[ReliabilityPlots()], enable_progress_bar=False)
    with pytest.raises(TypeError, match="OODSegmenter"):
        trainer.fit(Other(), datamodule=_Data())
