"""Mask-classification segmenters (tiny random Mask2Former / OneFormer from configs) through OODSegmenter."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.losses import LossTerm
from synthrel_lightning.models import (
    EvaluationResult,
    HFMask2Former,
    HFOneFormer,
    MaskClassificationOutput,
    OODSegmenter,
    per_pixel_class_scores,
)
from synthrel_lightning.testing import tiny_mask2former_config, tiny_oneformer_config

K = 5
MASK2FORMER = tiny_mask2former_config(decoder_layers=3)
ONEFORMER = tiny_oneformer_config(decoder_layers=3)


class _RbAOutlierLoss(LossTerm):
    """RbA's ``outlier_loss`` (github.com/NazirNayal8/RbA, criterion.py: squared hinge, tanh, 0 / 5)."""

    requires_mask_classification = True

    def forward(self, class_scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        score = -class_scores.tanh().sum(1, keepdim=True)
        score = nn.functional.interpolate(score, size=target.shape[-2:], mode="bilinear", align_corners=True)[:, 0]
        ood_score, id_score = score[target == OOD_ID], score[(target != OOD_ID) & (target != VOID_ID)]
        loss = nn.functional.relu(id_score).pow(2).mean()
        if ood_score.numel() > 0:
            loss = 0.5 * (loss + nn.functional.relu(5.0 - ood_score).pow(2).mean())
        return loss


def _rba_term() -> LossTerm:
    """The library's RbA loss term (its own tests compare it to the authors' code), else the transcription."""
    try:
        from synthrel_lightning.losses import RbALoss
    except ImportError:
        return _RbAOutlierLoss()
    return RbALoss()


def _sample(i: int, h: int = 64, w: int = 96, ood: bool = True) -> dict:
    g = torch.Generator().manual_seed(i)
    label = torch.randint(0, K, (h // 16, w // 16), generator=g).repeat_interleave(16, 0).repeat_interleave(16, 1)
    image = torch.randn(3, h, w, generator=g) * 0.2 + label.float()[None] / K
    label[:2] = VOID_ID
    ood_map = torch.where(label == VOID_ID, VOID_ID, 0)
    if ood:
        y, x = 8 + (i % 3) * 8, 16 + (i % 4) * 12
        image[:, y : y + 24, x : x + 24] = 3.0
        label[y : y + 24, x : x + 24] = OOD_ID
        ood_map[y : y + 24, x : x + 24] = 1
    return {"image": image, "label": label, "ood": ood_map, "name": f"f{i}"}


class _Set(torch.utils.data.Dataset):
    def __init__(self, n: int, ood: bool, offset: int = 0) -> None:
        self.n, self.ood, self.offset = n, ood, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        s = _sample(i + self.offset, ood=self.ood)
        if not self.ood:
            # in-distribution evaluation frames: the label holds no OOD id
            s["ood"] = torch.where(s["label"] == VOID_ID, VOID_ID, 0)
        return s


class _Data(L.LightningDataModule):
    val_set_names = ["clean", "objects"]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(_Set(4, True), batch_size=2)

    def val_dataloader(self):
        return [
            torch.utils.data.DataLoader(_Set(2, False, 10), batch_size=2),
            torch.utils.data.DataLoader(_Set(3, True, 20), batch_size=2),
        ]


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kwargs})


def test_per_pixel_class_scores_match_transformers_semantic_inference() -> None:
    from transformers import Mask2FormerImageProcessor

    torch.manual_seed(0)
    seg = HFMask2Former(checkpoint=None, num_classes=K, config=MASK2FORMER).eval()
    module = OODSegmenter(seg, num_classes=K, ood_score="rba")
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = seg.model(pixel_values=images)
        ours = module.raw_logits(images)
    assert ours.shape == (2, K, 64, 96)
    expected = Mask2FormerImageProcessor().post_process_semantic_segmentation(out, target_sizes=[(64, 96)] * 2)
    for b in range(2):
        assert torch.equal(ours[b].argmax(0), expected[b])


def test_mask2former_trains_with_its_criterion_and_rba_and_reports_component_metrics(tmp_path) -> None:
    torch.manual_seed(0)
    seg = HFMask2Former(checkpoint=None, num_classes=K, config=MASK2FORMER)
    before = {n: p.detach().clone() for n, p in seg.named_parameters()}
    module = OODSegmenter(
        seg,
        num_classes=K,
        losses=[_rba_term()],
        ood_score="rba",
        trainable=list(HFMask2Former.rba_trainable),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        component_tracks={"objects": "obstacle"},
        summary=False,
    )
    seen: list[EvaluationResult] = []

    class Collect(L.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append(outputs)

    trainer = _trainer(tmp_path, max_steps=2, callbacks=[Collect()])
    trainer.fit(module, datamodule=_Data())
    keys = set(trainer.callback_metrics)
    assert {"train/loss", "train/loss_criterion", f"train/loss_{module.losses[0].name}"} <= keys
    # RbA's freezing recipe: only the decoder's class and mask MLPs moved
    for name, p in seg.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        trainable = "class_predictor" in name or "mask_embedder" in name
        assert moved == trainable or (trainable and not moved and p.grad is None), name
    assert any(not torch.equal(p.detach(), before[n]) for n, p in seg.named_parameters())
    # one validation: evaluation results for both sets, and the component metrics of the OOD set
    assert {r.set_name for r in seen} == {"clean", "objects"}
    assert all(r.logits.shape[1] == K and r.score.shape == r.logits.shape[:1] + r.logits.shape[2:] for r in seen)
    assert {"val/objects/ap", "val/objects/siou", "val/objects/ppv", "val/objects/mean_f1"} <= keys
    assert not any(k.startswith("val/clean/") and k.endswith("siou") for k in keys)
    out = trainer.validate(module, datamodule=_Data(), verbose=False)
    assert "val/objects/mean_f1" in out[1]


def test_mask2former_loss_uses_auxiliary_layers() -> None:
    torch.manual_seed(0)
    seg = HFMask2Former(checkpoint=None, num_classes=K, config=MASK2FORMER)
    module = OODSegmenter(seg, num_classes=K, losses=[_rba_term()], ood_score="rba", model_criterion=0.0)
    batch = torch.utils.data.default_collate([_sample(0), _sample(1)])
    output = module.segmenter_output(batch["image"])
    assert isinstance(output, MaskClassificationOutput) and len(output.aux) == MASK2FORMER["decoder_layers"] - 1
    parts = module.compute_mask_classification_losses(output, batch["label"])
    term = _RbAOutlierLoss()
    expected = sum(
        term(per_pixel_class_scores(c, m), batch["label"])
        for c, m in [(output.class_logits, output.mask_logits), *output.aux]
    )
    torch.testing.assert_close(parts[f"loss_{module.losses[0].name}"], expected)
    torch.testing.assert_close(parts["loss"], expected)


def test_oneformer_semantic_wraps_trains_and_scores() -> None:
    torch.manual_seed(0)
    seg = HFOneFormer(checkpoint=None, num_classes=K, config=ONEFORMER, task_token_ids=[3, 1, 4, 1, 5])
    module = OODSegmenter(
        seg, num_classes=K, losses=[_rba_term()], ood_score="mask2anomaly", trainable=list(HFOneFormer.rba_trainable)
    )
    batch = torch.utils.data.default_collate([_sample(0), _sample(1)])
    parts = module.compute_mask_classification_losses(module.segmenter_output(batch["image"]), batch["label"])
    assert torch.isfinite(parts["loss"]) and parts["loss_criterion"] > 0
    parts["loss"].backward()
    assert all(p.grad is None for n, p in seg.named_parameters() if "class_embed" not in n and "mask_embed" not in n)
    module.eval()
    with torch.no_grad():
        scores = module(batch["image"])
        ood = module.score(scores)
    assert scores.shape == (2, K, 64, 96) and ood.shape == (2, 64, 96)
    torch.testing.assert_close(ood, -module.raw_logits(batch["image"]).amax(1))
    with pytest.raises(ValueError, match="task_token_ids"):
        HFOneFormer(checkpoint=None, num_classes=K, config=ONEFORMER)


def test_mask_classification_and_per_pixel_terms_are_checked_at_construction() -> None:
    from synthrel_lightning.losses import CrossEntropy
    from synthrel_lightning.models import TinySegmenter

    with pytest.raises(ValueError, match="needs mask-classification outputs"):
        OODSegmenter(TinySegmenter(num_classes=K, width=8), num_classes=K, losses=[_rba_term()])
    seg = HFMask2Former(checkpoint=None, num_classes=K, config=MASK2FORMER)
    with pytest.raises(ValueError, match="defined on per-pixel logits"):
        OODSegmenter(seg, num_classes=K, losses=[CrossEntropy()])
    with pytest.raises(ValueError, match="match no parameter"):
        OODSegmenter(seg, num_classes=K, trainable=["no_such_layer"])


def test_raw_transformers_mask2former_is_identified_and_missing_checkpoints_are_named(tmp_path) -> None:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    torch.manual_seed(0)
    raw = Mask2FormerForUniversalSegmentation(
        Mask2FormerConfig(num_labels=K, use_pretrained_backbone=False, **MASK2FORMER)
    ).eval()
    module = OODSegmenter(raw, num_classes=K, ood_score="rba", model_criterion=0.0)
    assert module.output_kind == "mask_classification"
    with torch.no_grad():
        assert module(torch.randn(1, 3, 64, 64)).shape == (1, K, 64, 64)
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(ValueError, match=f"HFMask2Former: cannot load checkpoint '{missing}'"):
        HFMask2Former(checkpoint=str(missing), num_classes=K)
