"""InpaintingEngine, the paper's crop/box/paste protocol, vocabularies and object masks, on tiny real pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthrel_lightning.labels import OOD_ID, TRAIN_NAME_TO_ID
from synthrel_lightning.seeding import torch_generator
from synthrel_lightning.synthesis.engine import InpaintingEngine, ModelLoadError, output_problem
from synthrel_lightning.synthesis.geometry import Box
from synthrel_lightning.synthesis.object_masks import BoxMasker, ChangedPixelsMasker, MaskRules, build_masker, feather
from synthrel_lightning.synthesis.protocol import context_window, crop_to_tensor, paste_square, snap_size, soft_box_mask
from synthrel_lightning.synthesis.vocabulary import (
    PAPER_OBJECTS,
    VocabularyEntry,
    article,
    control_vocabulary,
    load_vocabulary,
    resolve_vocabulary,
)
from synthrel_lightning.testing import build_tiny_inpaint_pipeline, save_tiny_pipeline

RES = 64  # tiny pipelines are run at 64x64 (a multiple of 8, like real SD needs)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_pipe():
    return build_tiny_inpaint_pipeline(seed=0)


@pytest.fixture(scope="module")
def frame(cityscapes_mini: Path) -> np.ndarray:
    from PIL import Image

    path = cityscapes_mini / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    return np.asarray(Image.open(path).convert("RGB"))


def make_engine(pipe, **kw) -> InpaintingEngine:
    kw.setdefault("num_inference_steps", 2)
    return InpaintingEngine(pipeline=pipe, device="cpu", dtype="float32", resolution=RES, **kw)


# -- vocabulary ------------------------------------------------------------------------
def test_paper_vocabulary_and_articles(tmp_path: Path) -> None:
    assert len(PAPER_OBJECTS) == 42 and len(set(PAPER_OBJECTS)) == 42
    assert all(e.label_value == OOD_ID for e in resolve_vocabulary())
    assert article("elephant") == "an" and article("lion") == "a" and article("umbrella") == "an"
    controls = control_vocabulary(["car", "person"])
    assert [c.label_value for c in controls] == [TRAIN_NAME_TO_ID["car"], TRAIN_NAME_TO_ID["person"]]
    with pytest.raises(ValueError, match="not a Cityscapes train class"):
        control_vocabulary(["lion"])
    txt = tmp_path / "v.txt"
    txt.write_text("# my objects\nlion\n\nsofa  # comfy\n")
    assert [e.name for e in load_vocabulary(txt)] == ["lion", "sofa"]
    yml = tmp_path / "v.yaml"
    yml.write_text(
        "objects:\n  - lion\n  - {name: car, label_value: car}\n  - {name: cone, prompt: an orange traffic cone}\n"
    )
    v = load_vocabulary(yml)
    assert v[1].label_value == TRAIN_NAME_TO_ID["car"] and v[2].prompt == "an orange traffic cone"
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {name: x, label_value: 77}\n")
    with pytest.raises(ValueError, match="bad.yaml.*label_value"):
        load_vocabulary(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("- {name: x, label_value: null}\n")
    with pytest.raises(ValueError, match="empty.yaml: the label of 'x' is empty"):
        load_vocabulary(empty)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_vocabulary(tmp_path / "missing.txt")


# -- protocol geometry -------------------------------------------------------------------
def test_context_window_centred_and_clamped() -> None:
    w = context_window((800, 500, 400), (1024, 2048))
    assert w.crop == Box(700, 400, 600) and w.box_in_crop.xyxy == (100, 100, 500, 500) and w.box == Box(800, 500, 400)
    # Near the right/bottom border the crop shifts inside the frame and keeps its size.
    w = context_window((1900, 900, 124), (1024, 2048))
    assert w.crop.x1 == 2048 and w.crop.y1 == 1024 and w.crop.side == 186
    bx0, by0, bx1, by1 = w.box_in_crop.xyxy
    assert (bx1 - bx0, by1 - by0) == (124, 124) and bx1 <= w.crop.side and by1 <= w.crop.side
    with pytest.raises(ValueError, match="does not fit"):
        context_window((2000, 0, 100), (1024, 2048))


def test_soft_mask_is_blurred_box() -> None:
    w = context_window((800, 500, 400), (1024, 2048))
    m = soft_box_mask(w, 512, 128)
    assert m.shape == (1, 512, 512)
    # Box occupies [85.3, 426.7) at 512; the 128 box blur gives ~0.5 at its edge, 1 deep inside, 0 far away.
    assert m[0, 256, 256] == pytest.approx(1.0) and m[0, 5, 5] == pytest.approx(0.0)
    assert 0.4 < float(m[0, 256, 86]) < 0.6
    assert 0.0 < float(m[0, 256, 60]) < 0.5 < float(m[0, 256, 110]) < 1.0
    assert torch.equal(soft_box_mask(w, 512, 1) > 0.5, soft_box_mask(w, 512, 1) == 1)


def test_paste_only_square(frame: np.ndarray) -> None:
    w = context_window((100, 60, 40), frame.shape[:2])
    crop = crop_to_tensor(frame, w, RES)
    assert crop.shape == (3, RES, RES) and 0 <= float(crop.min()) and float(crop.max()) <= 1
    new, patch = paste_square(frame, torch.ones(3, RES, RES), w)
    changed = (new != frame).any(axis=2)
    assert patch.shape == (40, 40, 3) and (patch == 255).all()
    assert changed[60:100, 100:140].mean() > 0.9 and changed.sum() == changed[60:100, 100:140].sum()
    assert snap_size(1024, 2048, 1024) == (512, 1024) and snap_size(101, 203, 1024) == (104, 200)


# -- the engine ----------------------------------------------------------------------------
def test_inpaint_batch_contract_and_determinism(tiny_pipe) -> None:
    eng = make_engine(tiny_pipe, batch_size=2)
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 3, RES, RES, generator=g)
    masks = torch.zeros(3, 1, RES, RES)
    masks[..., 16:48, 16:48] = 1
    prompts = [eng.prompt_for(o) for o in ("elephant", "lion", "owl")]
    assert prompts == ["A photo of an elephant", "A photo of a lion", "A photo of an owl"]
    out1 = eng.inpaint(imgs, masks, prompts, [torch_generator(7, i) for i in range(3)])
    out2 = eng.inpaint(imgs, masks, prompts, [torch_generator(7, i) for i in range(3)])
    assert out1.images.shape == (3, 3, RES, RES) and out1.valid == [True] * 3
    assert 0.0 <= float(out1.images.min()) and float(out1.images.max()) <= 1.0
    assert torch.equal(out1.images, out2.images)
    out3 = eng.inpaint(imgs, masks, prompts, [torch_generator(8, i) for i in range(3)])
    assert not torch.allclose(out1.images, out3.images)
    assert eng.stats["calls"] == 6 and eng.stats["inpainted"] == 9  # chunks of batch_size 2
    with pytest.raises(ValueError, match="multiples of 8"):
        eng.inpaint(torch.rand(1, 3, 60, 64), torch.ones(1, 1, 60, 64), ["x"], [torch.Generator()])
    with pytest.raises(ValueError, match="one prompt and one generator"):
        eng.inpaint(imgs, masks, prompts[:2], [torch.Generator()] * 3)


def test_nan_outputs_are_retried_then_skipped(frame: np.ndarray) -> None:
    pipe = build_tiny_inpaint_pipeline(seed=1)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias.fill_(float("nan"))  # a broken checkpoint: every output is NaN
    eng = make_engine(pipe, max_retries=2)
    res = eng.synthesize(frame, (100, 60, 40), "lion", seed=3)
    assert not res.ok and "no usable image" in res.reason
    assert np.array_equal(res.image, frame)
    assert eng.stats["skipped"] == 1 and eng.stats["retries"] == 2 and eng.stats["calls"] == 3
    assert output_problem(torch.zeros(3, 8, 8)) == "all black"
    assert output_problem(torch.full((3, 8, 8), 0.5)) is None


def test_synthesize_protocol(tiny_pipe, frame: np.ndarray) -> None:
    car = VocabularyEntry("car", TRAIN_NAME_TO_ID["car"])
    # Without refinement only the square changes.
    plain = make_engine(tiny_pipe, mask_method="changed")
    for r, (x0, y0, s) in zip(plain.synthesize_batch([frame], [(10, 60, 48)], ["elephant"], [0]), [(10, 60, 48)]):
        changed = (r.image != frame).any(axis=2)
        outside = changed.copy()
        outside[y0 : y0 + s, x0 : x0 + s] = False
        assert r.ok and changed.any() and not outside.any()
    # With the authors' refinement the whole refined frame is kept; the patch is its square.
    eng = make_engine(tiny_pipe, mask_method="changed", refine=True)
    a, b = eng.synthesize_batch([frame, frame], [(10, 60, 48), (150, 70, 36)], ["elephant", car], [0, 1])
    for r, (x0, y0, s) in ((a, (10, 60, 48)), (b, (150, 70, 36))):
        assert r.ok, r.reason
        changed = (r.image != frame).any(axis=2)
        outside = changed.copy()
        outside[y0 : y0 + s, x0 : x0 + s] = False
        assert outside.any() and changed.any()
        assert r.box == Box(x0, y0, s)
        assert np.array_equal(r.patch, r.image[y0 : y0 + s, x0 : x0 + s])
        assert r.object_mask.shape == (s, s) and r.object_mask.any() and r.alpha.shape == (s, s)
        assert r.model_id == eng.model_id
    assert a.label_value == OOD_ID and a.prompt == "A photo of an elephant"
    assert b.label_value == TRAIN_NAME_TO_ID["car"]
    label = np.zeros(frame.shape[:2], np.uint8)
    lm = b.label_map(label)
    assert (
        set(np.unique(lm)) <= {0, TRAIN_NAME_TO_ID["car"]}
        and (lm == TRAIN_NAME_TO_ID["car"]).sum() == b.object_mask.sum()
    )
    assert eng.stats["refined"] == 2
    entry = a.to_entry("frame", base_label=label)
    assert (
        entry.kind == "frame"
        and entry.label.shape == frame.shape[:2]
        and (entry.label == OOD_ID).sum() == a.object_mask.sum()
    )
    # Same inputs -> the same frames; another seed -> another one.
    a2, _ = make_engine(tiny_pipe, mask_method="changed", refine=True).synthesize_batch(
        [frame, frame], [(10, 60, 48), (150, 70, 36)], ["elephant", car], [0, 1]
    )
    assert np.array_equal(a2.image, a.image)
    # Alone instead of in a batch: per-sample generators give the same image up to float rounding.
    alone = make_engine(tiny_pipe, mask_method="changed", refine=True).synthesize(frame, (10, 60, 48), "elephant", 0)
    assert np.abs(alone.image.astype(int) - a.image.astype(int)).max() <= 1
    other = make_engine(tiny_pipe, mask_method="changed", refine=True).synthesize(frame, (10, 60, 48), "elephant", 5)
    assert np.abs(other.image.astype(int) - a.image.astype(int)).max() > 10


def test_load_from_local_folder_and_errors(tmp_path: Path, frame: np.ndarray) -> None:
    folder = save_tiny_pipeline(tmp_path / "tiny")
    eng = InpaintingEngine(
        model_id=str(folder),
        device="cpu",
        dtype="float16",
        num_inference_steps=2,
        resolution=RES,
        scheduler="DPMSolverMultistep",
    )
    assert not eng.loaded  # lazy
    res = eng.synthesize(frame, (100, 60, 40), "lion", seed=0)
    assert res.ok and eng.pipeline.unet.dtype == torch.float32  # fp16 falls back to fp32 on CPU
    assert type(eng.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"
    with pytest.raises(ModelLoadError, match="nowhere.*folder not found"):
        _ = InpaintingEngine(model_id=str(tmp_path / "nowhere"), device="cpu").pipeline
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        _ = InpaintingEngine(model_id=str(tmp_path / "empty"), device="cpu").pipeline
    with pytest.raises(ModelLoadError, match="'nobody/no-such-inpainting-model'.*hub id.*model_index.json"):
        _ = InpaintingEngine(model_id="nobody/no-such-inpainting-model", device="cpu").pipeline
    with pytest.raises(ValueError, match="cpu_offload"):
        InpaintingEngine(device="cpu", cpu_offload=True)
    with pytest.raises(ValueError, match="unknown scheduler"):
        InpaintingEngine(pipeline=build_tiny_inpaint_pipeline(), device="cpu", scheduler="Nope")


def test_non_inpainting_checkpoint_is_refused(tmp_path: Path) -> None:
    folder = save_tiny_pipeline(tmp_path / "t2i", kind="controlnet")
    with pytest.raises(ModelLoadError, match="not an inpainting checkpoint.*4 input channels"):
        _ = InpaintingEngine(model_id=str(folder), device="cpu", dtype="float32").pipeline


def test_controlnet_inpainting(frame: np.ndarray) -> None:
    pipe = build_tiny_inpaint_pipeline(seed=0, controlnet=True)
    eng = make_engine(pipe, controlnet_id="tiny", control="segmentation")
    label = np.zeros(frame.shape[:2], np.uint8)
    r = eng.synthesize(frame, (100, 60, 40), "lion", 0, label=label)
    assert r.ok and (r.image != frame).any()
    with pytest.raises(ValueError, match="needs the frames' label maps"):
        eng.synthesize(frame, (100, 60, 40), "lion", 0)


# -- object masks ----------------------------------------------------------------------------
def test_mask_rules_and_maskers() -> None:
    rules = MaskRules()
    box = Box(10, 10, 40)
    m = np.zeros((60, 60), bool)
    assert rules.check(m, box) == "empty mask"
    m[20:40, 20:40] = True
    assert rules.check(m, box) is None
    m[0:5, 0:30] = True
    assert "inside the box" in rules.check(m, box)
    tiny = np.zeros((60, 60), bool)
    tiny[20:22, 20:22] = True
    assert "covers" in rules.check(tiny, box)
    crop = np.zeros((60, 60, 3), np.uint8)
    orig = crop.copy()
    crop[15:45, 15:45] = 200  # the object
    crop[12, 12] = 255  # speckle: removed by the opening
    masker = ChangedPixelsMasker()
    res = masker.mask(crop, orig, box, "x")
    assert res.accepted and res.mask.sum() == 900 and not res.mask[12, 12]
    res = masker.mask(orig, orig, box, "x")
    assert not res.accepted and res.reason == "empty mask" and masker.stats["rejected_empty"] == 1
    assert BoxMasker().mask(crop, orig, box, "x").mask.sum() == 1600
    alpha = feather(res.mask | True, 2.0)
    assert alpha.max() <= 1 and alpha[30, 30] == pytest.approx(1.0) and alpha[0, 0] < 0.5
    with pytest.raises(ValueError, match="unknown object mask method"):
        build_masker("sam2")
