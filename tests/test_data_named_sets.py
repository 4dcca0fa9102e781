"""Evaluation sets by name: loaders from lists, dicts, datamodules and trainers."""

from __future__ import annotations

import lightning as L
import pytest
from torch.utils.data import DataLoader

from synthrel_lightning.data.named_sets import datamodule_loader, named_loader, named_loaders, trainer_loader


class Named(L.LightningDataModule):
    """Two validation sets and one test set, named as the project's datamodules name them."""

    val_set_names = ["clean", "fog"]
    test_set_names = ["road_anomaly"]

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(range(3)), DataLoader(range(5))]

    def test_dataloader(self) -> DataLoader:
        return DataLoader(range(7))


def test_names_come_from_lists_dicts_and_defaults() -> None:
    a, b = DataLoader(range(2)), DataLoader(range(4))
    assert named_loaders([a, b]) == {"val_0": a, "val_1": b}
    assert named_loaders([a], stage="test") == {"test_0": a}
    assert named_loaders({"x": a, "y": b}) == {"x": a, "y": b}
    assert named_loader(a, None) is a
    assert named_loader([a, b], "fog", names=["clean", "fog"]) is b
    with pytest.raises(ValueError, match=r"who: 2 val dataloaders but 1 set names \['clean'\]"):
        named_loader([a, b], "clean", names=["clean"], who="who")


def test_unknown_ambiguous_and_missing_sets_say_what_exists() -> None:
    a, b = DataLoader(range(2)), DataLoader(range(4))
    with pytest.raises(ValueError, match=r"'rain' is not a val set; available: \['val_0', 'val_1'\]"):
        named_loader([a, b], "rain")
    with pytest.raises(ValueError, match="several val sets"):
        named_loader([a, b], None)
    with pytest.raises(ValueError, match="no val dataloader"):
        named_loader([], None)
    with pytest.raises(ValueError, match="stage"):
        named_loader([a], None, stage="train")


def test_datamodule_and_trainer_resolution(tmp_path) -> None:
    dm = Named()
    assert len(datamodule_loader(dm, "fog").dataset) == 5
    assert len(datamodule_loader(dm, None, stage="test").dataset) == 7
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, accelerator="cpu")
    trainer.datamodule = dm  # what fit/validate set up
    assert len(trainer_loader(trainer, "clean").dataset) == 3
