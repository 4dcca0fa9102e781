"""The refinement pass as Loiseau et al. ran it, seen in the real diffusers pipeline calls of the tiny engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthrel_lightning.commands.generate import build_parser
from synthrel_lightning.synthesis.geometry import Box
from synthrel_lightning.synthesis.protocol import to_uint8
from synthrel_lightning.testing import TinyInpaintingEngine

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingEngine(TinyInpaintingEngine):
    """The tiny engine, recording the arguments and output of every real pipeline call."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls: list[dict] = []

    def pipeline_call(self, **kwargs):
        out = super().pipeline_call(**kwargs)
        self.calls.append(dict(kwargs, output=out.detach().float().cpu().clone()))
        return out


@pytest.fixture(scope="module")
def frame(cityscapes_mini: Path) -> np.ndarray:
    from PIL import Image

    path = cityscapes_mini / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    return np.asarray(Image.open(path).convert("RGB"))


def test_refinement_runs_on_the_full_frame_with_the_authors_settings(frame: np.ndarray) -> None:
    engine = RecordingEngine(refine=True, mask_method="box")
    box = Box(40, 60, 48)
    result = engine.synthesize(frame, box, "lion", seed=0)
    assert result.ok and len(engine.calls) == 2
    first, refine = engine.calls
    # The inpainting pass: the context crop at the engine's resolution, the paper's prompt and settings.
    assert tuple(first["image"].shape) == (1, 3, 64, 64)
    assert first["prompt"] == ["A photo of a lion"] and first["strength"] == 1.0 and first["guidance_scale"] == 15.0
    # The refinement pass: the full frame at full resolution (128 x 256, multiples of 8), the hard square
    # as mask, the bare object name, strength 0.65 and diffusers' default guidance 7.5.
    h, w = frame.shape[:2]
    assert (h % 8, w % 8) == (0, 0) and tuple(refine["image"].shape) == (1, 3, h, w)
    assert (refine["height"], refine["width"]) == (h, w)
    hard = torch.zeros(h, w)
    hard[box.slices] = 1.0
    assert torch.equal(refine["mask_image"][0, 0].cpu(), hard)
    assert refine["prompt"] == ["lion"] and refine["strength"] == 0.65 and refine["guidance_scale"] == 7.5
    # The refined frame is the pasted one (outside the square too: nothing else changed it before).
    pasted = refine["image"][0].cpu()
    assert torch.equal(pasted[:, : box.y0], torch.from_numpy(frame[: box.y0].copy()).permute(2, 0, 1).float() / 255)
    # The whole output frame is kept, and the object patch is its square.
    assert np.array_equal(result.image, to_uint8(refine["output"][0]))
    assert np.array_equal(result.patch, result.image[box.slices])
    assert engine.stats["refined"] == 1


def test_refinement_snaps_odd_frames_to_a_multiple_of_8(frame: np.ndarray) -> None:
    engine = RecordingEngine(refine=True, mask_method="box")
    odd = np.ascontiguousarray(frame[:123, :250])
    result = engine.synthesize(odd, Box(40, 60, 40), "zebra", seed=1)
    refine = engine.calls[-1]
    assert tuple(refine["image"].shape[-2:]) == (120, 248) and result.image.shape == odd.shape


def test_paper_recipe_turns_refinement_on() -> None:
    parser = build_parser()
    for recipe in ("generate_sd_inpainting.yaml", "generate_sd_inpainting_val.yaml"):
        cfg = parser.parse_args(["--config", str(REPO / "recipes" / recipe)])
        eng = cfg.engine.init_args
        assert eng.refine is True and eng.refine_strength == 0.65 and eng.refine_guidance_scale == 7.5
        assert eng.refine_region == "frame" and eng.refine_max_side is None
        assert (eng.guidance_scale, eng.strength, eng.dtype, eng.resolution) == (15.0, 1.0, "float16", 512)
    train = parser.parse_args(["--config", str(REPO / "recipes/generate_sd_inpainting.yaml")])
    assert (
        train.bank == "data/outlier_bank/train" and train.write == "object" and train.source.init_args.split == "train"
    )
    val = parser.parse_args(["--config", str(REPO / "recipes/generate_sd_inpainting_val.yaml")])
    assert val.bank == "data/outlier_bank/val" and val.write == "both" and val.eval_dir
