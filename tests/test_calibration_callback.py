"""TemperatureScaling with real Lightning trainers, and the calibrate tool on real (and crafted) checkpoints."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from synthrel_lightning.calibration import calibrate, collect_logits, expected_calibration_error, fit_temperature
from synthrel_lightning.callbacks import TemperatureScaling
from synthrel_lightning.checkpoints import CheckpointError
from synthrel_lightning.commands.calibrate import main

K = 5
OVERCONFIDENCE = 3.0


def true_weights() -> tuple[Tensor, Tensor]:
    """The per-pixel linear classifier whose softmax draws the labels (calibrated at T=1)."""
    g = torch.Generator().manual_seed(123)
    return torch.randn(K, 3, 1, 1, generator=g) * 1.5, torch.randn(K, generator=g) * 0.3


class Frames(Dataset):
    """Frames whose labels are drawn from softmax(true classifier), or uniformly (``noisy``)."""

    def __init__(self, n: int, seed: int, noisy: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 16, 16, generator=g)
        w, b = true_weights()
        probs = torch.softmax(F.conv2d(self.images, w, b), 1) if not noisy else torch.full((n, K, 16, 16), 1.0 / K)
        self.labels = torch.multinomial(probs.permute(0, 2, 3, 1).reshape(-1, K), 1, generator=g).reshape(n, 16, 16)
        self.labels[:, 0, :] = 255  # a void row: ignored by the fit

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "name": f"frame{i}"}


class TinyData(L.LightningDataModule):
    """Two named validation sets, as the project's datamodules expose them."""

    def __init__(self, num_val: int = 12, batch_size: int = 4) -> None:
        super().__init__()
        self.num_val = num_val
        self.batch_size = batch_size

    @property
    def val_set_names(self) -> list[str]:
        return ["clean", "noisy"]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Frames(8, seed=1), batch_size=self.batch_size)

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(Frames(self.num_val, seed=2), batch_size=self.batch_size),
            DataLoader(Frames(self.num_val, seed=3, noisy=True), batch_size=self.batch_size),
        ]


class TinyContractModule(L.LightningModule):
    """Follows the OOD segmenter's contract: buffer ``temperature``, ``raw_logits``, dict batches."""

    def __init__(self, scale: float = OVERCONFIDENCE, lr: float = 1e-6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, K, 1)
        w, b = true_weights()
        with torch.no_grad():
            self.conv.weight.copy_(w * scale)
            self.conv.bias.copy_(b * scale)
        self.lr = lr
        self.register_buffer("temperature", torch.ones(()))

    def raw_logits(self, images: Tensor) -> Tensor:
        return self.conv(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.raw_logits(images) / self.temperature

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return F.cross_entropy(self.raw_logits(batch["image"]), batch["label"], ignore_index=255)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss = F.cross_entropy(self(batch["image"]), batch["label"], ignore_index=255)
        self.log("val/nll", loss, add_dataloader_idx=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def make_trainer(tmp_path: Path, callbacks: list, **kwargs) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        max_steps=2,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path, name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kwargs,
    )


def test_fit_end_writes_the_fitted_temperature_into_the_module(tmp_path: Path) -> None:
    callback = TemperatureScaling(set_name="clean", method="nll")
    model, data = TinyContractModule(), TinyData()
    trainer = make_trainer(tmp_path, [callback], enable_checkpointing=False)
    trainer.fit(model, datamodule=data)

    assert callback.temperature is not None
    assert model.temperature.item() == pytest.approx(callback.temperature, rel=1e-6)
    assert callback.temperature == pytest.approx(OVERCONFIDENCE, rel=0.15)
    expected = fit_temperature(collect_logits(model, data.val_dataloader()[0]), method="nll").temperature
    assert callback.temperature == pytest.approx(expected, rel=1e-6)
    rows = list(csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv")))
    logged = [float(r["calibration/temperature"]) for r in rows if r.get("calibration/temperature")]
    assert logged == [pytest.approx(callback.temperature, rel=1e-6)]
    # The buffer belongs to the state_dict, so a checkpoint saved now carries T.
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    state = torch.load(tmp_path / "after.ckpt", weights_only=False)["state_dict"]
    assert state["temperature"].item() == pytest.approx(callback.temperature, rel=1e-6)


def test_validation_end_refits_before_checkpoints_are_saved(tmp_path: Path) -> None:
    callback = TemperatureScaling(set_name="noisy", method="ece_grid", when="validation_end", grid=(0.5, 10.0, 0.05))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model = TinyContractModule()
    trainer = make_trainer(tmp_path, [callback, ckpt], val_check_interval=1, num_sanity_val_steps=1)
    trainer.fit(model, datamodule=TinyData())

    # Labels of the noisy set ignore the image: its calibrated temperature is large.
    assert callback.temperature is not None and callback.temperature > 2 * OVERCONFIDENCE
    assert trainer.callback_metrics["calibration/temperature"].item() == pytest.approx(callback.temperature)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["state_dict"]["temperature"].item() == pytest.approx(callback.temperature, rel=1e-6)
    # Metrics of the validation run that follows a fit see the calibrated logits.
    after = trainer.validate(model, datamodule=TinyData(), verbose=False)
    uncalibrated = TinyContractModule()
    before = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(
        uncalibrated, datamodule=TinyData(), verbose=False
    )
    assert after[1]["val/nll/dataloader_idx_1"] < before[1]["val/nll/dataloader_idx_1"]


def test_a_dataloader_can_be_given_directly(tmp_path: Path) -> None:
    loader = DataLoader(Frames(8, seed=9), batch_size=4)
    callback = TemperatureScaling(dataloader=loader, max_batches=1)
    model = TinyContractModule()
    make_trainer(tmp_path, [callback], enable_checkpointing=False, limit_val_batches=0).fit(
        model, datamodule=TinyData()
    )
    first_batch = next(iter(loader))
    expected = fit_temperature([(model.raw_logits(first_batch["image"]).detach(), first_batch["label"])]).temperature
    assert callback.temperature == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("pixels_per_image", ["all", 40])
def test_the_callback_passes_its_per_frame_sample_to_the_fit(tmp_path: Path, pixels_per_image: int | str) -> None:
    loader = DataLoader(Frames(8, seed=9), batch_size=4)
    callback = TemperatureScaling(dataloader=loader, method="ece_grid", pixels_per_image=pixels_per_image)
    model = TinyContractModule()
    make_trainer(tmp_path, [callback], enable_checkpointing=False, limit_val_batches=0).fit(
        model, datamodule=TinyData()
    )
    fit = callback.last_fit
    assert fit is not None and fit.pixels_per_image == pixels_per_image
    expected = fit_temperature(collect_logits(model, loader), method="ece_grid", pixels_per_image=pixels_per_image)
    assert fit.temperature == expected.temperature
    assert fit.fit_pixels == expected.fit_pixels
    if pixels_per_image == "all":
        assert fit.fit_pixels == fit.pixels
    else:
        assert fit.fit_pixels == min(fit.pixels, 8 * pixels_per_image)


def test_unknown_set_and_missing_buffer_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"available: \['clean', 'noisy'\]"):
        make_trainer(tmp_path, [TemperatureScaling(set_name="fog")], enable_checkpointing=False).fit(
            TinyContractModule(), datamodule=TinyData()
        )

    class NoBuffer(TinyContractModule):
        def __init__(self) -> None:
            super().__init__()
            del self._buffers["temperature"]

    with pytest.raises(AttributeError, match="temperature"):
        make_trainer(tmp_path, [TemperatureScaling(set_name="clean")], enable_checkpointing=False).fit(
            NoBuffer(), datamodule=TinyData()
        )
    with pytest.raises(ValueError, match="when"):
        TemperatureScaling(when="epoch")


def trained_checkpoint(tmp_path: Path) -> tuple[TinyContractModule, Path]:
    """A briefly trained model and its Lightning checkpoint."""
    model = TinyContractModule()
    trainer = make_trainer(tmp_path, [], enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyData())
    source = tmp_path / "model.ckpt"
    trainer.save_checkpoint(source)
    return model, source


def write_recipe(tmp_path: Path) -> Path:
    """A training recipe (model built at another scale: the checkpoint's weights must win)."""
    recipe = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 3, "logger": False},
        "model": {"class_path": f"{__name__}.TinyContractModule", "init_args": {"scale": 0.1}},
        "data": {"class_path": f"{__name__}.TinyData", "init_args": {"num_val": 12}},
    }
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    return config


def test_calibrate_tool_writes_a_calibrated_copy_of_the_checkpoint(tmp_path: Path, capsys) -> None:
    model, source = trained_checkpoint(tmp_path)
    original = source.read_bytes()
    out = tmp_path / "calibrated" / "model-T.ckpt"
    args = ["--config", str(write_recipe(tmp_path)), "--ckpt_path", str(source), "--set_name", "clean"]
    old_umask = os.umask(0o027)
    try:
        report = main([*args, "--output", str(out), "--device", "cpu", "--progress", "false"])
    finally:
        os.umask(old_umask)

    assert source.read_bytes() == original
    assert sorted(p.name for p in out.parent.iterdir()) == ["model-T.ckpt"]  # no temporary left behind
    assert out.stat().st_mode & 0o777 == 0o640  # the umask decides, as for any file the user creates
    saved = torch.load(out, weights_only=True)  # plain values only: loads without trusting the file
    logits = list(collect_logits(model, TinyData().val_dataloader()[0]))
    expected = fit_temperature(logits).temperature
    assert saved["state_dict"]["temperature"].item() == pytest.approx(expected, rel=1e-5)
    assert saved["calibration"]["set_name"] == "clean"
    assert saved["calibration"]["temperature"] == report.fit.temperature
    assert saved["optimizer_states"]  # the rest of the checkpoint is kept, so training can resume
    restored = TinyContractModule.load_from_checkpoint(out)
    assert restored.temperature.item() == pytest.approx(expected, rel=1e-5)

    # the report: T, ECE before/after on the set, pixels used, where the checkpoint went
    assert report.fit.pixels == report.fit.fit_pixels == 12 * 15 * 16  # the void row is left out
    assert report.fit.ece_before == pytest.approx(expected_calibration_error(*map(torch.cat, zip(*logits))), rel=1e-6)
    assert report.fit.ece_after < report.fit.ece_before
    printed = capsys.readouterr().out
    assert f"temperature: {report.fit.temperature:.6g} (nll) on set clean" in printed
    assert f"{report.fit.ece_before:.4f} before -> {report.fit.ece_after:.4f} after" in printed
    assert "pixels used: 2,880" in printed and f"calibrated checkpoint: {out}" in printed

    with pytest.raises(CheckpointError, match="missing.ckpt"):
        calibrate(TinyContractModule(), TinyData(), tmp_path / "missing.ckpt")
    with pytest.raises(SystemExit, match="is the input checkpoint"):
        main([*args, "--output", str(source)])


class Payload:
    """Pickles as a call of os.makedirs: loading it with weights_only=False would create a folder."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@dataclass
class Recipe:
    """A harmless custom object, as older checkpoints pickle in their hyper-parameters."""

    lr: float


def test_calibrate_refuses_a_crafted_checkpoint_unless_trusted(tmp_path: Path, capsys) -> None:
    _, source = trained_checkpoint(tmp_path)
    config = write_recipe(tmp_path)
    checkpoint = torch.load(source, weights_only=True)
    marker = tmp_path / "code-ran"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({**checkpoint, "hyper_parameters": {"x": Payload(str(marker))}}, crafted)
    out = tmp_path / "out.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), "--ckpt_path", str(crafted), "--output", str(out), "--set_name", "clean"])
    message = exit_info.value.code
    assert isinstance(message, str)  # SystemExit with a message: exit status 1, the message on stderr
    assert message.startswith(f"error: calibrate: checkpoint {crafted} holds objects that are not plain tensors")
    assert "--trust_checkpoint" in message
    assert not marker.exists() and not out.exists()

    custom = tmp_path / "custom.ckpt"
    torch.save({**checkpoint, "hyper_parameters": {"recipe": Recipe(0.1)}}, custom)
    with pytest.raises(SystemExit, match="--trust_checkpoint"):
        main(["--config", str(config), "--ckpt_path", str(custom), "--output", str(out), "--set_name", "clean"])
    args = ["--config", str(config), "--ckpt_path", str(custom), "--output", str(out), "--set_name", "clean"]
    capsys.readouterr()
    report = main([*args, "--trust_checkpoint", "true"])
    assert torch.load(out, weights_only=False)["hyper_parameters"]["recipe"] == Recipe(0.1)
    assert report.output == out
    assert "collecting logits (clean)" in capsys.readouterr().err  # the progress bar


def test_real_ood_segmenter_on_demo_scenes(tmp_path: Path) -> None:
    from synthrel_lightning.cli import main as cli_main
    from synthrel_lightning.data import DemoDataModule
    from synthrel_lightning.models import OODSegmenter, TinySegmenter

    data_args = {
        "root": str(tmp_path / "demo"),
        "num_train": 2,
        "num_val": 2,
        "image_size": [64, 128],
        "crop_size": [64, 128],
        "batch_size": 2,
        "eval_batch_size": 2,
        "num_workers": 0,
        "val_outliers": False,  # one validation set: the clean demo frames
    }
    model = OODSegmenter(TinySegmenter(num_classes=19, width=8, depth=3))
    callback = TemperatureScaling(set_name="demo", method="ece_grid", when="validation_end", grid=(0.5, 10.0, 0.25))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(tmp_path, [callback, ckpt], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=DemoDataModule(**data_args))
    assert callback.temperature is not None
    assert model.temperature.item() == pytest.approx(callback.temperature)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["state_dict"]["temperature"].item() == pytest.approx(
        callback.temperature
    )

    recipe = {
        "model": {
            "init_args": {
                "segmenter": {
                    "class_path": "synthrel_lightning.models.TinySegmenter",
                    "init_args": {"num_classes": 19, "width": 8, "depth": 3},
                }
            }
        },
        "data": {"class_path": "synthrel_lightning.data.DemoDataModule", "init_args": data_args},
    }
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "calibrated.ckpt"
    cli_main(["calibrate", "--config", str(config), "--ckpt_path", str(last), "--method", "nll", "--output", str(out)])
    model.temperature.fill_(1.0)
    dm = DemoDataModule(**data_args)
    dm.setup("validate")
    expected = fit_temperature(collect_logits(model, dm.val_dataloader()[0]), method="nll").temperature
    assert torch.load(out, weights_only=False)["state_dict"]["temperature"].item() == pytest.approx(expected, rel=1e-5)
