"""``sml_stats``: standardized-max-logit statistics of a checkpoint, stored with it and loadable with weights_only."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from synthrel_lightning.data import DemoDataModule
from synthrel_lightning.labels import OOD_ID
from synthrel_lightning.models import OODSegmenter, TinySegmenter

DATA = {"num_train": 4, "num_val": 2, "image_size": [64, 128], "crop_size": [64, 128], "batch_size": 2}


def test_sml_stats_writes_the_statistics_of_an_eval_mode_pass_into_a_copy_of_the_checkpoint(tmp_path: Path) -> None:
    from synthrel_lightning.commands.sml_stats import main

    root = tmp_path / "demo"
    L.seed_everything(0)
    trained = OODSegmenter(TinySegmenter(width=8))
    with torch.no_grad():  # weights other than the initial ones, BatchNorm statistics included
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
        trained.segmenter.head.weight.add_(2.0 * torch.randn_like(trained.segmenter.head.weight))
        for _ in range(3):  # BatchNorm running statistics of image-like inputs
            trained.segmenter(torch.rand(2, 3, 64, 128))
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": {"ood_score": "energy"}}, ckpt)
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 3},
        "model": {
            "class_path": "synthrel_lightning.models.OODSegmenter",
            "init_args": {
                "segmenter": {"class_path": "synthrel_lightning.models.TinySegmenter", "init_args": {"width": 8}}
            },
        },
        "data": {"class_path": "synthrel_lightning.data.DemoDataModule", "init_args": {"root": str(root), **DATA}},
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))

    L.seed_everything(0)
    out = main(["--config", str(cfg), "--ckpt_path", str(ckpt)])
    assert out == ckpt.with_name("last_sml.ckpt") and ckpt.is_file()
    payload = torch.load(out, weights_only=True)
    assert payload["hyper_parameters"]["ood_score"] == "standardized_max_logit"
    mean, std = payload["state_dict"]["scorer.class_mean"], payload["state_dict"]["scorer.class_std"]

    # independent pass: the checkpoint's weights, eval mode, the same training batches (the same
    # random augmentations: the command built the model, consuming random numbers, then the data)
    L.seed_everything(0)
    OODSegmenter(TinySegmenter(width=8))
    data = DemoDataModule(root=root, **{k: tuple(v) if isinstance(v, list) else v for k, v in DATA.items()})
    data.prepare_data()
    data.setup("fit")
    trained.eval()
    maxima, preds = [], []
    with torch.no_grad():
        for batch in data.train_dataloader():
            z = trained.segmenter(batch["image"])
            z = torch.nn.functional.interpolate(z, size=batch["label"].shape[-2:], mode="bilinear", align_corners=False)
            keep = batch["label"] != OOD_ID
            maxima.append(z.amax(1)[keep])
            preds.append(z.argmax(1)[keep])
    m, p = torch.cat(maxima).double(), torch.cat(preds)
    checked = 0
    for c in range(19):
        if int((p == c).sum()) >= 2:
            assert float(mean[c]) == pytest.approx(float(m[p == c].mean()), rel=1e-5, abs=1e-6)
            assert float(std[c]) == pytest.approx(float(m[p == c].std()), rel=1e-4, abs=1e-6)
            checked += 1
    assert checked >= 2

    # the written checkpoint scores with SML straight away
    restored = OODSegmenter(TinySegmenter(width=8), ood_score="standardized_max_logit")
    restored.load_state_dict(payload["state_dict"])
    restored.eval()
    with torch.no_grad():
        score = restored.score(restored(torch.randn(1, 3, 64, 128)))
    assert score.shape == (1, 64, 128) and torch.isfinite(score).all()


def test_sml_stats_is_a_registered_tool() -> None:
    from synthrel_lightning.cli import TOOLS

    assert TOOLS["sml_stats"] == "synthrel_lightning.commands.sml_stats"
