"""The OOD segmenter LightningModule and the segmenter factories, through the public API."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.losses import CrossEntropy
from synthrel_lightning.models import HFSegformer, OODSegmenter, SMPSegmenter, TinySegmenter


def _batch(b: int = 2, h: int = 64, w: int = 96, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 19, (b, h, w), generator=g)
    label[:, :4] = VOID_ID
    ood = torch.where(label == VOID_ID, VOID_ID, 0)
    return {
        "image": torch.randn(b, 3, h, w, generator=g),
        "label": label,
        "ood": ood,
        "name": [f"f{i}" for i in range(b)],
    }


@pytest.mark.parametrize(
    "segmenter",
    [
        TinySegmenter(num_classes=19, width=8),
        SMPSegmenter(arch="FPN", encoder_name="resnet18", encoder_weights=None, num_classes=19),
        HFSegformer(
            checkpoint=None,
            config={
                "hidden_sizes": [8, 16, 32, 64],
                "depths": [1, 1, 1, 1],
                "decoder_hidden_size": 32,
                "num_attention_heads": [1, 1, 2, 2],
            },
        ),
    ],
    ids=["tiny", "smp-fpn", "segformer"],
)
def test_logits_are_upsampled_to_input_size(segmenter: nn.Module) -> None:
    module = OODSegmenter(segmenter)
    images = torch.randn(1, 3, 72, 100)  # not a multiple of 32: smp pads and crops
    logits = module(images)
    assert logits.shape == (1, 19, 72, 100)
    assert torch.isfinite(logits).all()


def test_any_module_with_wrong_class_count_is_rejected() -> None:
    module = OODSegmenter(nn.Conv2d(3, 5, 1), num_classes=19)
    with pytest.raises(ValueError, match=r"expected \(B, 19, h, w\)"):
        module(torch.randn(1, 3, 8, 8))


def test_temperature_divides_logits_and_is_saved_in_state_dict() -> None:
    module = OODSegmenter(TinySegmenter(width=8)).eval()
    images = torch.randn(1, 3, 32, 32)
    raw = module.raw_logits(images)
    module.temperature.fill_(2.0)
    torch.testing.assert_close(module(images), raw / 2.0)
    assert module.state_dict()["temperature"].item() == 2.0


def test_cross_entropy_ignores_void_and_ood_pixels() -> None:
    logits = torch.randn(1, 19, 4, 4)
    target = torch.randint(0, 19, (1, 4, 4))
    masked = target.clone()
    masked[0, 0] = OOD_ID
    masked[0, 1] = VOID_ID
    expected = nn.functional.cross_entropy(logits[..., 2:, :], target[..., 2:, :])
    torch.testing.assert_close(CrossEntropy()(logits, masked), expected)
    with pytest.raises(ValueError, match="outside 0..18"):
        CrossEntropy()(logits, torch.full((1, 4, 4), 100))


class _Loader(torch.utils.data.Dataset):
    def __init__(self, n: int, with_ood: bool) -> None:
        self.n, self.with_ood = n, with_ood

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        b = _batch(1, 32, 48, seed=i)
        sample = {k: v[0] for k, v in b.items()}
        sample["name"] = f"f{i}"
        if self.with_ood:
            sample["ood"][10:20, 10:20] = 1
            sample["image"][:, 10:20, 10:20] += 3.0
        return sample


class _NamedData(L.LightningDataModule):
    val_set_names = ["clean", "objects"]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(_Loader(4, False), batch_size=2)

    def val_dataloader(self):
        return [
            torch.utils.data.DataLoader(_Loader(2, False), batch_size=2),
            torch.utils.data.DataLoader(_Loader(2, True), batch_size=2),
        ]


def test_fit_logs_named_metrics_per_dataloader(tmp_path) -> None:
    module = OODSegmenter(TinySegmenter(width=8), optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    trainer = L.Trainer(
        max_epochs=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, datamodule=_NamedData())
    keys = set(trainer.callback_metrics)
    assert {
        "val/clean/miou",
        "val/objects/miou",
        "val/objects/ap",
        "val/objects/auroc",
        "val/objects/fpr95",
        "train/loss",
    } <= keys
    # The clean set has no OOD pixels: no OOD metric may be logged for it.
    assert not any(k.startswith("val/clean/") and k.endswith(("/ap", "/auroc")) for k in keys)
    assert 0.0 <= float(trainer.callback_metrics["val/objects/ap"]) <= 1.0
    assert (tmp_path / "metrics_summary.json").is_file()


def test_predict_returns_prediction_and_score_maps(tmp_path) -> None:
    module = OODSegmenter(TinySegmenter(width=8), ood_score="msp")
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    out = trainer.predict(module, dataloaders=torch.utils.data.DataLoader(_Loader(2, True), batch_size=2))
    assert out[0]["prediction"].shape == (2, 32, 48) and out[0]["prediction"].dtype == torch.uint8
    assert out[0]["score"].shape == (2, 32, 48)
    assert ((out[0]["score"] >= 0) & (out[0]["score"] <= 1)).all()  # MSP = 1 - max softmax
    # The prediction writer put one train-id PNG and one score map per frame on disk.
    import numpy as np
    from PIL import Image

    written = tmp_path / "predictions"
    assert sorted(p.name for p in written.glob("*_score.npy")) == ["f0_score.npy", "f1_score.npy"]
    np.testing.assert_allclose(np.load(written / "f1_score.npy"), out[0]["score"][1].numpy(), rtol=0, atol=0)
    assert np.array_equal(np.asarray(Image.open(written / "f0_pred.png")), out[0]["prediction"][0].numpy())


def test_standardized_max_logit_statistics_come_from_training(tmp_path) -> None:
    module = OODSegmenter(
        TinySegmenter(width=8), ood_score="standardized_max_logit", optimizer=lambda p: torch.optim.SGD(p, lr=0.01)
    )
    trainer = L.Trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=_NamedData())
    assert torch.isfinite(trainer.callback_metrics["val/objects/ap"])
    assert (module.scorer.class_std[module.scorer.class_std > 0]).numel() > 0


def test_unknown_score_and_bad_losses_are_rejected() -> None:
    with pytest.raises(ValueError, match="energy"):
        OODSegmenter(TinySegmenter(width=8), ood_score="not-a-score")
    with pytest.raises(TypeError, match="LossTerm"):
        OODSegmenter(TinySegmenter(width=8), losses=[nn.CrossEntropyLoss()])  # type: ignore[list-item]
