"""What one fit run writes: settings logged once and complete, and the summary's epoch as Lightning counts it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from synthrel_lightning.cli import main

TINY = [
    "--trainer.max_epochs=2",
    "--trainer.enable_progress_bar=false",
    "--data.init_args.num_train=4",
    "--data.init_args.num_val=2",
    "--data.init_args.image_size=[64,128]",
    "--data.init_args.crop_size=[64,128]",
    "--data.init_args.batch_size=2",
    "--model.init_args.segmenter.init_args.width=8",
]


def test_logged_settings_are_the_config_once_and_the_epoch_label_matches_the_checkpoint(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", "demo", *TINY, f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"])
    (config_path,) = (tmp_path / "runs").rglob("config.yaml")
    run = config_path.parent
    config = yaml.safe_load(config_path.read_text())
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    # The logged settings are the configuration: no second, flat copy of the module's arguments
    # (whose 'optimizer' overwrote LightningCLI's top-level 'optimizer').
    assert set(hparams) == set(config) - {"config"}, set(hparams) ^ set(config)
    assert hparams["optimizer"] == config["optimizer"]
    assert hparams["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.AdamW"
    # Two epochs trained: the last is epoch 1 (counting from 0), as the checkpoint's name says.
    summary = json.loads((run / "metrics_summary.json").read_text())
    (checkpoint,) = (run / "checkpoints").glob("epoch=*.ckpt")
    assert checkpoint.name.startswith("epoch=1-")
    assert summary["epoch"] == 1 and summary["epochs_completed"] == 2
    text = (run / "metrics_summary.md").read_text()
    assert text.splitlines()[0].startswith("# Metrics after fit (epoch 1 of 0..1,")
