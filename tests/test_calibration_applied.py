"""A clustered or local calibrator is applied by the OOD segmenter itself, saved with it and restored."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from synthrel_lightning.calibration.calibrator import LocalCalibrator
from synthrel_lightning.calibration.local import LocalTemperatureNetwork
from synthrel_lightning.models import OODSegmenter
from synthrel_lightning.module_spec import build_module

K = 5


def _spec(score: str) -> dict:
    return {
        "class_path": "synthrel_lightning.models.OODSegmenter",
        "init_args": {
            "segmenter": {"class_path": "synthrel_lightning.models.TinySegmenter", "init_args": {"num_classes": K}},
            "num_classes": K,
            "ood_score": score,
        },
    }


def _local_calibrator() -> LocalCalibrator:
    torch.manual_seed(1)
    net = LocalTemperatureNetwork(K)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return LocalCalibrator(net)


def test_the_calibrator_replaces_the_temperature_in_forward_and_prediction() -> None:
    module = build_module(_spec("energy")).eval()
    module.temperature.fill_(3.0)  # ignored once a calibrator is set
    module.calibrator = _local_calibrator()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        raw = module.raw_logits(images)
        expected = module.calibrator.network(raw, images)
        torch.testing.assert_close(module(images), expected)
        out = module.predict_step({"image": images, "name": ["a", "b"]}, 0)
    torch.testing.assert_close(out["score"], -torch.logsumexp(expected, dim=1))
    assert torch.equal(out["prediction"], expected.argmax(1).to(torch.uint8))
    assert not torch.allclose(expected, raw / 3.0)


def test_scores_on_raw_outputs_see_them_uncalibrated() -> None:
    module = build_module(_spec("max_logit")).eval()
    uses_t = module.scorer.uses_temperature
    module.calibrator = _local_calibrator()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        logits, score = module.calibrated_scores_and_ood(images)
        raw = module.raw_logits(images)
    torch.testing.assert_close(score, -(logits if uses_t else raw).amax(1))


def test_the_calibrator_is_saved_in_the_checkpoint_and_restored(tmp_path: Path) -> None:
    module = build_module(_spec("energy")).eval()
    module.calibrator = _local_calibrator()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert saved["calibration"]["kind"] == "lts"
    loaded = OODSegmenter.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True).eval()
    assert loaded.calibrator is not None and loaded.calibrator.method == "lts"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), module(images))


def test_a_calibrated_module_is_not_exported_silently_without_its_calibrator() -> None:
    from synthrel_lightning.deploy import DeployableSegmenter

    module = build_module(_spec("energy"))
    module.calibrator = _local_calibrator()
    with pytest.raises(ValueError, match="clustered or local calibrator"):
        DeployableSegmenter(module)
