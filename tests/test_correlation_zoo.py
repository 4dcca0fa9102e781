"""Zoo entries become models through the safe checkpoint loader; per-frame statistics need the evaluation result."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from synthrel_lightning.checkpoints import CheckpointError
from synthrel_lightning.correlation.frame_statistics import FrameStatistics
from synthrel_lightning.correlation.zoo import ZooEntry, instantiate_model
from synthrel_lightning.models import OODSegmenter, TinySegmenter

SEGMENTER = {"class_path": "synthrel_lightning.models.TinySegmenter", "init_args": {"num_classes": 5, "width": 4}}


def _save_like_fit(path) -> OODSegmenter:
    """A checkpoint as ``fit`` writes it: LightningCLI hands the module its configuration as hyper-parameters."""
    from lightning.pytorch.cli import instantiate_module
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters_context

    config = {"_class_path": "synthrel_lightning.models.OODSegmenter", "segmenter": SEGMENTER, "num_classes": 5}
    with _given_hyperparameters_context(hparams=dict(config), instantiator="lightning.pytorch.cli.instantiate_module"):
        model = instantiate_module(L.LightningModule, dict(config))
    trainer = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return model


def test_checkpoint_alone_rebuilds_a_fit_model_with_its_weights(tmp_path) -> None:
    original = _save_like_fit(tmp_path / "fit.ckpt")
    rebuilt = instantiate_model(ZooEntry("fit", checkpoint=str(tmp_path / "fit.ckpt")))
    assert isinstance(rebuilt, OODSegmenter) and rebuilt.num_classes == 5
    images = torch.rand(1, 3, 16, 16)
    assert torch.equal(rebuilt(images), original(images))


def test_definition_plus_weights_and_missing_files(tmp_path) -> None:
    torch.manual_seed(1)
    model = OODSegmenter(TinySegmenter(num_classes=5, width=4), num_classes=5)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    spec = {
        "class_path": "synthrel_lightning.models.OODSegmenter",
        "init_args": {"segmenter": SEGMENTER, "num_classes": 5},
    }
    rebuilt = instantiate_model(ZooEntry("bare", checkpoint=str(tmp_path / "bare.pt"), model=spec))
    images = torch.rand(1, 3, 16, 16)
    assert torch.equal(rebuilt(images), model(images))
    with pytest.raises(CheckpointError, match="zoo entry 'gone': checkpoint .*gone.ckpt does not exist"):
        instantiate_model(ZooEntry("gone", checkpoint=str(tmp_path / "gone.ckpt"), model=spec))
    with pytest.raises(ValueError, match="zoo entry 'empty' has neither checkpoint, model nor config"):
        instantiate_model(ZooEntry("empty"))


class _OpensFileWhenUnpickled:
    """Pickles as a call to ``open(path, "w")``: loading it creates the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_checkpoint_needs_the_trust_opt_in(tmp_path) -> None:
    marker = tmp_path / "ran"
    model = OODSegmenter(TinySegmenter(num_classes=5, width=4), num_classes=5)
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": model.state_dict(), "extra": _OpensFileWhenUnpickled(str(marker))}, crafted)
    spec = {"init_args": {"segmenter": SEGMENTER, "num_classes": 5}}
    with pytest.raises(CheckpointError, match="holds objects that are not plain tensors"):
        instantiate_model(ZooEntry("crafted", checkpoint=str(crafted), model=spec))
    assert not marker.exists()
    # The explicit opt-in (per entry or for the whole zoo) loads it, and so runs its code.
    instantiate_model(ZooEntry("crafted", checkpoint=str(crafted), model=spec), trust_checkpoint=True)
    assert marker.exists()


class _ReturnsNothing(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def validation_step(self, batch, batch_idx):
        return None


def test_frame_statistics_needs_an_evaluation_result() -> None:
    trainer = L.Trainer(
        callbacks=[FrameStatistics({"val_0": ["miou"]})],
        logger=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(TypeError, match="_ReturnsNothing.validation_step returned NoneType; it must return an Eval"):
        trainer.validate(_ReturnsNothing(), DataLoader(torch.zeros(2, 1)), verbose=False)
