"""Open-vocabulary (OWLv2 + SAM) object masks, on tiny real models (domain shift: test_generators_domains.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synthrel_lightning.synthesis.engine import InpaintingEngine
from synthrel_lightning.synthesis.geometry import Box
from synthrel_lightning.synthesis.object_masks import MaskRules, OpenVocabMasker
from synthrel_lightning.testing import (
    build_tiny_inpaint_pipeline,
    build_tiny_owlv2,
    build_tiny_sam,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def label_map(cityscapes_mini: Path) -> np.ndarray:
    from PIL import Image

    path = cityscapes_mini / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png"
    return np.asarray(Image.open(path))[::2, ::2].copy()  # 64x128


def test_open_vocab_masker_glue(cityscapes_mini: Path) -> None:
    from PIL import Image

    frame = np.asarray(
        Image.open(cityscapes_mini / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png").convert("RGB")
    )
    # Random tiny detector: threshold 0 makes it always "detect"; the rules are relaxed accordingly.
    masker = OpenVocabMasker(
        detector=build_tiny_owlv2(), sam=build_tiny_sam(), box_threshold=0.0, device="cpu", rules=MaskRules(0.0, 0.0)
    )
    crop = frame[40:100, 90:150]
    box = masker.detect(crop, "lion")
    assert box is not None and 0 <= box[0] <= box[2] <= 60 and 0 <= box[1] <= box[3] <= 60
    res = masker.mask(crop, crop, Box(10, 10, 40), "lion")
    assert res.mask.shape == (60, 60) and res.mask.dtype == bool
    # A detector that finds nothing -> an empty, rejected mask (the frame is dropped).
    strict = OpenVocabMasker(detector=masker._detector, sam=masker._sam, box_threshold=1.0, device="cpu")
    res = strict.mask(crop, crop, Box(10, 10, 40), "lion")
    assert not res.accepted and res.reason == "empty mask" and strict.stats["no_detection"] == 1
    # Inside the engine.
    eng = InpaintingEngine(
        pipeline=build_tiny_inpaint_pipeline(0),
        device="cpu",
        dtype="float32",
        resolution=64,
        num_inference_steps=2,
        mask_method=strict,
    )
    r = eng.synthesize(frame, (100, 60, 40), "lion", 0)
    assert not r.ok and r.reason == "empty mask" and eng.stats["mask_rejected"] == 1
    with pytest.raises(OSError, match="could not load detector model"):
        OpenVocabMasker(detector_id=str(Path("/nonexistent/owl")), device="cpu").detect(crop, "lion")
