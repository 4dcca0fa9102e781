"""Mask-classification class scores on any input size, and raw transformers modules trained with the defaults.

The reference is RbA's inference (github.com/NazirNayal8/RbA, mask2former/maskformer_model.py
``MaskFormer.forward`` with ``SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE: False``, ``semantic_inference``,
detectron2's ``ImageList.from_tensors`` and ``sem_seg_postprocess``; evaluate_ood.py ``get_RbA``),
transcribed below on the outputs of the same transformers model.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.models import HFMask2Former, HFOneFormer, OODSegmenter
from synthrel_lightning.testing import tiny_mask2former_config, tiny_oneformer_config

K = 5
MASK2FORMER = tiny_mask2former_config(decoder_layers=2)
ONEFORMER = tiny_oneformer_config(decoder_layers=2)


def _rba_inference(model, image: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RbA's per-image inference (sem_seg and -Σ tanh) transcribed, on a transformers Mask2Former."""
    h, w = image.shape[-2:]
    # ImageList.from_tensors(images, size_divisibility=32): zero padding at the bottom/right
    ph, pw = (h + 31) // 32 * 32, (w + 31) // 32 * 32
    padded = image.new_zeros(3, ph, pw)
    padded[:, :h, :w] = image
    out = model(pixel_values=padded[None])
    mask_cls, mask_pred = out.class_queries_logits[0], out.masks_queries_logits
    mask_pred = F.interpolate(mask_pred, size=(ph, pw), mode="bilinear", align_corners=False)[0]
    # semantic_inference
    semseg = torch.einsum("qc,qhw->chw", F.softmax(mask_cls, dim=-1)[..., :-1], mask_pred.sigmoid())
    # sem_seg_postprocess(result, img_size=(h, w), output_height, output_width)
    semseg = semseg[:, :h, :w].expand(1, -1, -1, -1)
    semseg = F.interpolate(semseg, size=(height, width), mode="bilinear", align_corners=False)[0]
    return semseg, -semseg.tanh().sum(dim=0)


@pytest.mark.parametrize("size", [(64, 96), (50, 70), (33, 65), (47, 128)])
def test_class_scores_and_rba_score_equal_rbas_inference_on_any_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    seg = HFMask2Former(checkpoint=None, num_classes=K, config=MASK2FORMER).eval()
    module = OODSegmenter(seg, num_classes=K, ood_score="rba", summary=False).eval()
    images = torch.randn(2, 3, *size)
    label_size = (size[0] * 2 + 1, size[1] * 2 - 3)
    with torch.no_grad():
        ours = module(images)
        score = module.score(ours)
        resized = module.raw_logits(images, label_size)
        for b in range(2):
            ref, ref_score = _rba_inference(seg.model, images[b], *size)
            torch.testing.assert_close(ours[b], ref, rtol=0, atol=1e-6)
            torch.testing.assert_close(score[b], ref_score, rtol=0, atol=1e-5)
            ref_resized, _ = _rba_inference(seg.model, images[b], *label_size)
            torch.testing.assert_close(resized[b], ref_resized, rtol=0, atol=1e-6)


def test_class_scores_equal_transformers_post_processing_before_argmax() -> None:
    """transformers' post-processor resamples the masks through a fixed 384x384 grid (the size its image
    processor produces); on such inputs its scores are the ones Mask2Former's inference computes."""
    from transformers import Mask2FormerImageProcessor

    torch.manual_seed(0)
    seg = HFMask2Former(checkpoint=None, num_classes=K, config=MASK2FORMER).eval()
    module = OODSegmenter(seg, num_classes=K, ood_score="rba", summary=False).eval()
    images = torch.randn(2, 3, 384, 384)
    with torch.no_grad():
        ours = module(images)
        out = seg.model(pixel_values=images)
    expected = Mask2FormerImageProcessor().post_process_semantic_segmentation(
        out, target_sizes=[(384, 384)] * 2, return_segmentation_scores=True
    )
    for b in range(2):
        torch.testing.assert_close(ours[b], expected[b]["segmentation_scores"], rtol=0, atol=1e-6)
        assert torch.equal(ours[b].argmax(0), expected[b]["segmentation"])


def _batch(i: int, h: int = 50, w: int = 70) -> dict:
    g = torch.Generator().manual_seed(i)
    label = torch.randint(0, K, (h, w), generator=g)
    label[:3] = VOID_ID
    label[10:20, 10:30] = OOD_ID
    image = torch.randn(3, h, w, generator=g) * 0.2 + label.clamp(max=K).float()[None] / K
    ood = torch.where(label == OOD_ID, 1, torch.where(label == VOID_ID, VOID_ID, 0))
    return {"image": image, "label": label, "ood": ood, "name": f"f{i}"}


class _Data(L.LightningDataModule):
    def train_dataloader(self):
        return torch.utils.data.DataLoader([_batch(i) for i in range(4)], batch_size=2)


def _fit(module: OODSegmenter, tmp_path) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=_Data())
    return trainer


def test_raw_transformers_mask2former_trains_with_the_default_criterion(tmp_path) -> None:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    torch.manual_seed(0)
    raw = Mask2FormerForUniversalSegmentation(
        Mask2FormerConfig(num_labels=K, use_pretrained_backbone=False, **MASK2FORMER)
    )
    before = {n: p.detach().clone() for n, p in raw.named_parameters()}
    module = OODSegmenter(raw, num_classes=K, ood_score="rba", summary=False)
    trainer = _fit(module, tmp_path)
    assert torch.isfinite(trainer.callback_metrics["train/loss_criterion"])
    assert any(not torch.equal(p.detach(), before[n]) for n, p in raw.named_parameters())
    # the same losses as the wrapped model on the same weights
    wrapped = OODSegmenter(HFMask2Former.wrap(raw), num_classes=K, summary=False)
    module.train(), wrapped.train()
    batch = torch.utils.data.default_collate([_batch(7), _batch(8)])
    torch.manual_seed(3)
    a = module.compute_mask_classification_losses(module.segmenter_output(batch["image"]), batch["label"])
    torch.manual_seed(3)
    b = wrapped.compute_mask_classification_losses(wrapped.segmenter_output(batch["image"]), batch["label"])
    torch.testing.assert_close(a["loss"], b["loss"])


def test_oneformer_trains_with_the_default_criterion_and_a_raw_one_is_told_what_it_needs(tmp_path) -> None:
    from transformers import OneFormerConfig, OneFormerForUniversalSegmentation

    torch.manual_seed(0)
    raw = OneFormerForUniversalSegmentation(
        OneFormerConfig(num_labels=K, use_pretrained_backbone=False, is_training=False, **ONEFORMER)
    )
    before = {n: p.detach().clone() for n, p in raw.named_parameters()}
    module = OODSegmenter(HFOneFormer.wrap(raw, task_token_ids=[3, 1, 4, 1, 5]), num_classes=K, summary=False)
    trainer = _fit(module, tmp_path)
    assert torch.isfinite(trainer.callback_metrics["train/loss_criterion"])
    assert any(not torch.equal(p.detach(), before[n]) for n, p in raw.named_parameters())
    bare = OODSegmenter(raw, num_classes=K, summary=False)
    with pytest.raises(TypeError, match=r"OneFormerForUniversalSegmentation needs its task prompt.*HFOneFormer\.wrap"):
        bare.segmenter_output(torch.randn(1, 3, 64, 64))
