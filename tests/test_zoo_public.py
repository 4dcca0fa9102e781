"""recipes/zoo_cityscapes_public.yaml at full public size: its checkpoints, its stated size, panoptic checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from test_models_mask_classification import MASK2FORMER

from synthrel_lightning.correlation.zoo import ZooEntry
from synthrel_lightning.study.calibration_study import distinct_segmenters

ZOO = Path(__file__).resolve().parents[1] / "recipes" / "zoo_cityscapes_public.yaml"
CITYSCAPES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip
EXPECTED = {
    *(f"nvidia/segformer-b0-finetuned-cityscapes-{r}" for r in ("512-1024", "640-1280", "768-768", "1024-1024")),
    *(f"nvidia/segformer-b{b}-finetuned-cityscapes-1024-1024" for b in range(1, 6)),
    *(
        f"facebook/mask2former-swin-{s}-cityscapes-{t}"
        for s in ("tiny", "small", "base-IN21k", "large")
        for t in ("semantic", "panoptic")
    ),
    "shi-labs/oneformer_cityscapes_swin_large",
    "shi-labs/oneformer_cityscapes_dinat_large",
}
SCORES = {
    "synthrel_lightning.models.HFSegformer": {"msp", "max_logit", "entropy", "energy"},
    "synthrel_lightning.models.HFMask2Former": {"rba", "mask2anomaly", "msp", "entropy"},
    "synthrel_lightning.models.HFOneFormer": {"rba", "mask2anomaly", "msp", "entropy"},
}


def _zoo() -> list[dict]:
    return yaml.safe_load(ZOO.read_text())["zoo"]


def test_every_public_checkpoint_with_every_score_it_supports() -> None:
    zoo = _zoo()
    by_ckpt: dict[str, set[str]] = {}
    for e in zoo:
        seg = e["model"]["init_args"]["segmenter"]
        by_ckpt.setdefault(seg["init_args"]["checkpoint"], set()).add(e["model"]["init_args"]["ood_score"])
        assert by_ckpt[seg["init_args"]["checkpoint"]] <= SCORES[seg["class_path"]]
    assert set(by_ckpt) == EXPECTED
    for ckpt, scores in by_ckpt.items():
        cls = next(
            e["model"]["init_args"]["segmenter"]["class_path"]
            for e in zoo
            if e["model"]["init_args"]["segmenter"]["init_args"]["checkpoint"] == ckpt
        )
        assert scores == SCORES[cls], ckpt
    assert not any("instance" in c for c in by_ckpt)  # 8-class checkpoints have no semantic head
    assert len({e["name"] for e in zoo}) == len(zoo) == 4 * len(EXPECTED)


def test_header_states_the_size_against_the_papers() -> None:
    text = ZOO.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    m = re.search(
        r"(\d+) checkpoints of 3 architecture families \(SegFormer: (\d+), Mask2Former: (\d+),"
        r"\s*#\s*OneFormer: (\d+)\)",
        header,
    )
    assert m, header
    total, segformer, mask2former, oneformer = map(int, m.groups())
    assert total == len(EXPECTED) == segformer + mask2former + oneformer
    assert (segformer, mask2former, oneformer) == (9, 8, 2)
    assert f"({4 * total} entries" in header and "about 40 mmsegmentation models" in header
    entries = [ZooEntry(**e) for e in _zoo()]
    kept, _ = distinct_segmenters(entries)
    assert len(kept) == total  # the calibration study counts each checkpoint once


@pytest.fixture
def panoptic_folder(tmp_path) -> tuple[Path, torch.nn.Module]:
    """A tiny Mask2Former saved as a Cityscapes panoptic checkpoint is: 19 train-id labels, more queries."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    torch.manual_seed(0)
    cfg = Mask2FormerConfig(
        **{**MASK2FORMER, "num_queries": 12},
        num_labels=19,
        id2label=dict(enumerate(CITYSCAPES)),
        label2id={n: i for i, n in enumerate(CITYSCAPES)},
        use_pretrained_backbone=False,
    )
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    model.save_pretrained(tmp_path / "panoptic")
    return tmp_path / "panoptic", model


def test_a_panoptic_checkpoint_loads_with_its_class_head_and_gives_semantic_output(panoptic_folder) -> None:
    from synthrel_lightning.models import HFMask2Former, OODSegmenter

    folder, reference = panoptic_folder
    seg = HFMask2Former(checkpoint=str(folder), num_classes=19).eval()
    # nothing re-initialised: the class head (19 classes + no-object) is the checkpoint's
    for name, p in reference.state_dict().items():
        torch.testing.assert_close(seg.model.state_dict()[name], p, msg=name)
    assert seg.model.config.num_queries == 12 and seg.model.config.id2label[13] == "car"
    images = torch.randn(1, 3, 64, 64)
    model = OODSegmenter(seg, ood_score="rba").eval()
    with torch.no_grad():
        logits = model(images)
        out = reference(pixel_values=images)
    assert logits.shape == (1, 19, 64, 64)
    # semantic inference of Mask2Former: sum_q softmax(c_q)[:K] sigmoid(m_q), masks upsampled to the image
    masks = torch.nn.functional.interpolate(
        out.masks_queries_logits, size=(64, 64), mode="bilinear", align_corners=False
    )
    want = torch.einsum("bqk,bqhw->bkhw", out.class_queries_logits.softmax(-1)[..., :-1], masks.sigmoid())
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_every_entry_instantiates_with_tiny_configs_and_scores() -> None:
    from test_models_zoo import _parser, _tiny

    parser = _parser()
    images = torch.randn(1, 3, 64, 64)
    built: dict[str, torch.nn.Module] = {}
    for e in _zoo():
        spec = _tiny(e["model"])
        ckpt = e["model"]["init_args"]["segmenter"]["init_args"]["checkpoint"]
        if ckpt not in built:
            built[ckpt] = parser.instantiate(parser.parse_object({"model": spec})).model.eval()
        model = built[ckpt]
        model.set_ood_score(spec["init_args"]["ood_score"])
        with torch.no_grad():
            score = model.score(model(images))
        assert score.shape == (1, 64, 64) and torch.isfinite(score).all(), e["name"]
    assert set(built) == EXPECTED
