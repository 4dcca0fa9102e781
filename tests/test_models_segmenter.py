"""The OOD segmenter LightningModule and the segmenter factories, through the public API."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.losses import CrossEntropy
from synthrel_lightning.models import EvaluationResult, HFSegformer, OODSegmenter, SMPSegmenter, TinySegmenter


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


def _fit(module: OODSegmenter, tmp_path, data: L.LightningDataModule | None = None, **kwargs) -> L.Trainer:
    trainer = L.Trainer(
        **{
            "max_epochs": 1,
            "default_root_dir": tmp_path,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            **kwargs,
        }
    )
    trainer.fit(module, datamodule=data or _NamedData())
    return trainer


class _TenClassData(_NamedData):
    """Labels with 10 classes only."""

    def train_dataloader(self):
        return torch.utils.data.DataLoader(_TenClasses(_Loader(4, False)), batch_size=2)

    def val_dataloader(self):
        return [torch.utils.data.DataLoader(_TenClasses(_Loader(2, s)), batch_size=2) for s in (False, True)]


class _TenClasses(torch.utils.data.Dataset):
    def __init__(self, base: torch.utils.data.Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        s = self.base[i]
        s["label"] = torch.where(s["label"] < 19, s["label"] % 10, s["label"])
        return s


def test_standardized_max_logit_is_built_for_the_model_class_count(tmp_path) -> None:
    """Regression: the score was built for 19 classes whatever num_classes, and failed on its first update."""
    module = OODSegmenter(
        TinySegmenter(num_classes=10, width=8),
        num_classes=10,
        ood_score="standardized_max_logit",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
    )
    assert module.scorer.num_classes == 10
    trainer = _fit(module, tmp_path, _TenClassData())
    assert torch.isfinite(trainer.callback_metrics["val/objects/ap"])


def test_standardized_max_logit_statistics_equal_an_eval_mode_pass_of_the_final_model(tmp_path) -> None:
    module = OODSegmenter(
        TinySegmenter(width=8), ood_score="standardized_max_logit", optimizer=lambda p: torch.optim.SGD(p, lr=0.5)
    )
    data = _NamedData()
    _fit(module, tmp_path, data, max_epochs=2)
    # independent pass: final weights, eval mode (BatchNorm running statistics), every training pixel
    # not labelled OOD, grouped by prediction, unbiased variance (the authors' calculate_statistics.py)
    module.eval()
    maxima, preds = [], []
    with torch.no_grad():
        for batch in data.train_dataloader():
            z = module.segmenter(batch["image"])
            z = nn.functional.interpolate(z, size=batch["label"].shape[-2:], mode="bilinear", align_corners=False)
            keep = batch["label"] != OOD_ID
            maxima.append(z.amax(1)[keep])
            preds.append(z.argmax(1)[keep])
    m, p = torch.cat(maxima).double(), torch.cat(preds)
    scorer = module.scorer
    checked = 0
    for c in range(19):
        sel = m[p == c]
        if sel.numel() >= 2:
            torch.testing.assert_close(scorer.class_mean[c].double(), sel.mean(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(scorer.class_std[c].double(), sel.std(), rtol=1e-4, atol=1e-6)
            checked += 1
    assert checked >= 1
    # train-mode logits (batch statistics) give other statistics: the pass really ran in eval mode
    module.train()
    with torch.no_grad():
        z = module.segmenter(next(iter(data.train_dataloader()))["image"])
    assert not torch.allclose(z.amax(1).mean().double(), m.mean(), atol=1e-3)


def test_sml_without_statistics_says_how_to_compute_them() -> None:
    module = OODSegmenter(TinySegmenter(width=8), ood_score="standardized_max_logit").eval()
    with pytest.raises(RuntimeError, match="SMLStatistics.*sml_stats"):
        module.score(module(torch.randn(1, 3, 32, 32)))


def test_validation_returns_evaluation_results_and_non_finite_outputs_name_the_set(tmp_path) -> None:
    results: list[EvaluationResult] = []

    class Collect(L.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            results.append(outputs)

    module = OODSegmenter(TinySegmenter(width=8), summary=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path, callbacks=[Collect()])
    trainer.validate(module, datamodule=_NamedData(), verbose=False)
    assert [(r.set_name, r.batch_idx) for r in results] == [("clean", 0), ("objects", 0)]
    r = results[1]
    assert r.logits.shape == (2, 19, 32, 48) and r.score.shape == (2, 32, 48) and r.names == ["f0", "f1"]
    module.eval()
    with torch.inference_mode():
        torch.testing.assert_close(r.score, module.score(module(r.images)))
    assert module.set_name("val", 1) == "objects"

    class Broken(nn.Module):
        def forward(self, images):
            out = torch.zeros(images.shape[0], 19, *images.shape[-2:])
            out[..., 0, 0] = float("nan")
            return out

    with pytest.raises(FloatingPointError, match=r"val set 'clean', batch 0"):
        trainer.validate(OODSegmenter(Broken(), summary=False), datamodule=_NamedData(), verbose=False)


def test_metric_groups_are_configurable_per_set(tmp_path) -> None:
    module = OODSegmenter(
        TinySegmenter(width=8),
        metrics=["segmentation"],
        set_metrics={"objects": ["pixel_ood"]},
        summary=False,
    )
    trainer = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    out = trainer.validate(module, datamodule=_NamedData(), verbose=False)
    assert "val/clean/miou" in out[0] and "val/clean/ece" not in out[0]
    assert "val/objects/ap" in out[1] and "val/objects/miou" not in out[1] and "val/objects/siou" not in out[1]
    with pytest.raises(ValueError, match="unknown metric groups.*valid"):
        OODSegmenter(TinySegmenter(width=8), metrics=["segmentaton"])


def test_paper_protocol_averages_per_image_metrics_with_void_as_negative(tmp_path) -> None:
    from sklearn.metrics import auc, precision_recall_curve, roc_auc_score

    module = OODSegmenter(TinySegmenter(width=8), ood_protocol="paper", summary=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    out = trainer.validate(module, datamodule=_NamedData(), verbose=False)[1]
    aps, aurocs = [], []
    module.eval()
    with torch.no_grad():
        for batch in _NamedData().val_dataloader()[1]:
            scores = module.score(module(batch["image"]))
            for s, o in zip(scores, batch["ood"]):
                y = (o == 1).flatten().numpy()  # void (255) counts as negative
                precision, recall, _ = precision_recall_curve(y, s.flatten().numpy())
                aps.append(auc(recall, precision))  # GenVal's AUPR-in, the trapezoid area
                aurocs.append(roc_auc_score(y, s.flatten().numpy()))
    assert out["val/objects/ap"] == pytest.approx(sum(aps) / len(aps), abs=1e-5)
    assert out["val/objects/auroc"] == pytest.approx(sum(aurocs) / len(aurocs), abs=1e-5)
    assert "val/objects/pooled_ap" in out and "val/objects/aupr_out" in out


def test_validate_logs_misclassification_metrics_per_set(tmp_path) -> None:
    from synthrel_lightning.metrics import MisclassificationMetrics

    module = OODSegmenter(TinySegmenter(width=8), summary=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    out = trainer.validate(module, datamodule=_NamedData(), verbose=False)
    module.eval()
    for i, loader in enumerate(_NamedData().val_dataloader()):
        reference = MisclassificationMetrics(mode="exact")
        with torch.no_grad():
            for batch in loader:
                reference.update(module(batch["image"]), batch["label"])
        name = _NamedData.val_set_names[i]
        for key, value in reference.compute().items():
            assert out[i][f"val/{name}/{key}"] == pytest.approx(float(value), abs=1e-4), (name, key)


def test_raw_transformers_segformer_is_accepted_and_unknown_outputs_are_explained() -> None:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    raw = SegformerForSemanticSegmentation(
        SegformerConfig(
            num_labels=19,
            hidden_sizes=[8, 16, 32, 64],
            depths=[1, 1, 1, 1],
            decoder_hidden_size=32,
            num_attention_heads=[1, 1, 2, 2],
        )
    )
    module = OODSegmenter(raw)
    assert module.output_kind == "per_pixel"
    assert module(torch.randn(1, 3, 64, 96)).shape == (1, 19, 64, 96)

    class Pair(nn.Module):
        def forward(self, images):
            return (images, images)

    with pytest.raises(TypeError, match="returned a tuple.*Expected per-pixel logits"):
        OODSegmenter(Pair())(torch.randn(1, 3, 8, 8))


def test_unknown_score_and_bad_losses_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown OOD score 'not-a-score'; valid names: msp, max_logit"):
        OODSegmenter(TinySegmenter(width=8), ood_score="not-a-score")
    with pytest.raises(TypeError, match="LossTerm"):
        OODSegmenter(TinySegmenter(width=8), losses=[nn.CrossEntropyLoss()])  # type: ignore[list-item]


def test_a_typo_in_ood_score_is_caught_when_the_config_is_parsed() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(OODSegmenter, "model", skip={"segmenter"})
    assert parser.parse_args(["--model.ood_score=standardized_max_logit"]).model.ood_score == "standardized_max_logit"
    with pytest.raises(Exception, match="energi"):
        parser.parse_args(["--model.ood_score=energi"])


def test_ood_score_may_be_a_module() -> None:
    from synthrel_lightning.scores import StandardizedMaxLogit

    class NegativeMean(nn.Module):
        def forward(self, logits):
            return -logits.mean(1)

    module = OODSegmenter(TinySegmenter(width=8), ood_score=NegativeMean()).eval()
    logits = module(torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(module.score(logits), -logits.mean(1))
    assert module.ood_score == "NegativeMean"
    sml = OODSegmenter(TinySegmenter(num_classes=10, width=8), num_classes=10, ood_score=StandardizedMaxLogit(10))
    assert sml.scorer.num_classes == 10
    with pytest.raises(ValueError, match="num_classes=19, the model 10"):
        OODSegmenter(TinySegmenter(num_classes=10, width=8), num_classes=10, ood_score=StandardizedMaxLogit(19))


def test_validate_reports_component_metrics_equal_to_the_official_code_port(tmp_path) -> None:
    import numpy as np
    from test_metrics_components import reference_frame

    from synthrel_lightning.metrics import SIOU_THRESHOLDS, TRACK_SIZES

    torch.manual_seed(0)
    module = OODSegmenter(TinySegmenter(width=8), ood_score="msp", component_tracks={"objects": "obstacle"})
    trainer = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    out = trainer.validate(module, datamodule=_NamedData(), verbose=False)[1]
    assert {"val/objects/siou", "val/objects/ppv", "val/objects/mean_f1"} <= set(out)
    # the module predicts score >= threshold (the pixel metric's operating point); on float32 scores the
    # official code's score > t gives the same pixels with t the float32 just below the first one >= threshold
    first = torch.tensor(out["val/objects/best_f1_threshold"], dtype=torch.float64).float()
    first = first if float(first) >= out["val/objects/best_f1_threshold"] else torch.nextafter(first, first + 1)
    threshold = float(torch.nextafter(first, first - 1))
    seg_min, inst_min = TRACK_SIZES["obstacle"]
    siou, ppv = [], []
    module.eval()
    with torch.no_grad():
        for batch in _NamedData().val_dataloader()[1]:
            scores = module.score(module(batch["image"]))
            for s, o in zip(scores.numpy(), batch["ood"].numpy()):
                ref = reference_frame(s, o, threshold, seg_min, inst_min)
                siou += list(ref["siou_gt"])
                ppv += list(ref["ppv"])
    siou_a, ppv_a = np.array(siou), np.array(ppv)
    assert len(siou_a) > 0 and len(ppv_a) > 0
    f1 = []
    for tau in SIOU_THRESHOLDS:
        tp, fn, fp = (siou_a >= tau).sum(), (siou_a < tau).sum(), (ppv_a < tau).sum()
        f1.append(2 * tp / (2 * tp + fn + fp))
    assert out["val/objects/siou"] == pytest.approx(siou_a.mean(), abs=1e-6)
    assert out["val/objects/ppv"] == pytest.approx(ppv_a.mean(), abs=1e-6)
    assert out["val/objects/mean_f1"] == pytest.approx(float(np.mean(f1)), abs=1e-6)


def test_sml_statistics_without_a_loader_or_datamodule_says_so(tmp_path) -> None:
    from synthrel_lightning.callbacks import SMLStatistics

    module = OODSegmenter(TinySegmenter(width=8), ood_score="standardized_max_logit", summary=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    assert trainer.train_dataloader is None
    with pytest.raises(RuntimeError, match="SMLStatistics: the trainer has no training loader yet and no datamodule"):
        SMLStatistics._compute(trainer, module, max_batches=1)
