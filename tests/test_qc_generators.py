"""The generators name each frame's object beside its label, and QC reads that name (inpainted and joint sets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthrel_lightning.data.cityscapes import CityscapesDataset
from synthrel_lightning.data.synthetic import SyntheticFramesDataset
from synthrel_lightning.labels import OOD_ID
from synthrel_lightning.qc import ObjectNames, run_qc
from synthrel_lightning.synthesis.object_masks import ObjectMasker, OpenVocabMasker
from synthrel_lightning.testing import build_tiny_owlv2, build_tiny_sam

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class BrightMasker(ObjectMasker):
    """Test fixture: the object is the crop's brighter-than-average pixels (reads the image only)."""

    def find(self, crop, original, box, object_name):
        grey = crop.astype(float).mean(-1)
        return grey > grey.mean()


def _masker() -> OpenVocabMasker:
    return OpenVocabMasker(box_threshold=0.0, device="cpu", detector=build_tiny_owlv2(), sam=build_tiny_sam())


def test_generate_eval_frames_carry_their_object_name(tmp_path: Path, cityscapes_mini: Path) -> None:
    from synthrel_lightning.synthesis.generate.run import generate
    from synthrel_lightning.testing import TinyInpaintingEngine

    eval_dir = tmp_path / "eval"
    summary = generate(
        str(tmp_path / "bank"), CityscapesDataset(cityscapes_mini, split="val"),
        engine=TinyInpaintingEngine(mask_method="box", refine=False), vocabulary=["zebra"], max_frames=1,
        write="frame", eval_dir=str(eval_dir), accelerator="cpu", devices=1, progress=False,
    )  # fmt: skip
    assert summary.done == 1
    frames = SyntheticFramesDataset(eval_dir)
    (sidecar,) = (eval_dir / "labels").glob("*_object.json")
    assert json.loads(sidecar.read_text()) == {"object": "zebra", "ood": True}
    assert ObjectNames()(frames.names[0], frames.frames[0].label) == "zebra"
    result = run_qc(frames, None, _masker(), qc_dir=tmp_path / "qc", device="cpu")
    assert result.table.get(frames.names[0], "object.name") == "zebra"
    assert result.summary["objects"]["per_object"]["zebra"]["frames"] == 1
    # Sets written before the names were kept: the outlier bank the set came from names the objects.
    sidecar.unlink()
    assert ObjectNames(tmp_path / "bank")(frames.names[0], frames.frames[0].label) == "zebra"


def test_joint_shift_frames_carry_the_pasted_object_name(tmp_path: Path, cityscapes_mini: Path) -> None:
    from synthrel_lightning.generators.domain_generation import generate_domains
    from synthrel_lightning.generators.domains import DomainShiftGenerator
    from synthrel_lightning.synthesis.sources import ProceduralObjectSource
    from synthrel_lightning.testing import save_tiny_pipeline

    tiny = save_tiny_pipeline(tmp_path / "tiny", kind="controlnet")
    gen = DomainShiftGenerator(
        str(tiny), str(tiny / "controlnet"), encoding="cityscapes_palette", domains=["fog"], caption="a street",
        num_inference_steps=1, device="cpu", dtype="float32",
    )  # fmt: skip
    out = tmp_path / "sets"
    generate_domains(
        str(out), CityscapesDataset(cityscapes_mini, split="val"), gen, crop="square", resolution=64, sets="joint",
        ood_objects=ProceduralObjectSource(size_range=(24, 48)), accelerator="cpu", devices=1, progress=False,
    )  # fmt: skip
    joint = SyntheticFramesDataset(out / "fog-ood")
    name = ObjectNames()(joint.names[0], joint.frames[0].label)
    assert name  # the name the prompt carried ("<caption>, with a <object>")
    # (The tiny OWLv2's 16-token text limit cannot take the procedural objects' longer names.)
    result = run_qc(joint, None, BrightMasker(), qc_dir=tmp_path / "qc", device="cpu")
    row = result.table.rows[joint.names[0]]
    assert row["object.name"] == name and row["object.status"] == "checked"
    assert row["object.label_px"] == int((joint.load_raw(0)["label"] == OOD_ID).sum()) > 0
