"""GenVal's domain-rendering protocol: 512 seeded draws with replacement, random square crops, GenVal's prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthrel_lightning.data.cityscapes import CityscapesDataset
from synthrel_lightning.generators.domain_generation import PROTOCOLS, DomainWorkItems, generate_domains
from synthrel_lightning.generators.domains import GENVAL_PROMPT_TEMPLATE, DomainShiftGenerator
from synthrel_lightning.labels import LABEL_TO_TRAIN_ID
from synthrel_lightning.testing import save_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 8, 19  # a landscape label map whose train id is its column index (0..18)


class ColumnFrames(torch.utils.data.Dataset):
    """``n`` frames whose train-id label is the column index plus, in row 0, the frame number (to tell frames apart)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        label = np.tile(np.arange(W, dtype=np.int64), (H, 1))
        label[0, :] = index  # row 0 names the frame
        return {"image": torch.zeros(3, H, W), "label": torch.from_numpy(label), "name": f"city_{index:06d}_000019"}


def genval_prompt(caption: str, domain: str) -> str:
    """Transcription of GenVal's ControlNet/style_transfer.py: ``prompt = data["txt"] + f", in {domain}"``, then
    ``process`` conditions on ``prompt + ', ' + a_prompt`` with ``a_prompt = ""``."""
    prompt = caption + f", in {domain}"
    a_prompt = ""
    return prompt + ", " + a_prompt


def test_genval_draws_are_seeded_with_replacement_512_by_default(tmp_path: Path) -> None:
    src = ColumnFrames(5)
    items = DomainWorkItems(src, tmp_path, ["fog", "night"], resolution=H)
    assert items.protocol == "genval" and len(items) == items.total == 2 * 512
    fog = [it for it in items.items if it[1] == "fog"]
    frames = [it[0] for it in fog]
    assert len(fog) == 512 and [it[3][0] for it in fog] == list(range(512))
    # With replacement: 512 draws from 5 frames, every frame drawn many times, roughly uniformly.
    counts = np.bincount(frames, minlength=5)
    assert counts.sum() == 512 and counts.min() > 60 and counts.max() < 150
    again = DomainWorkItems(src, tmp_path, ["fog", "night"], resolution=H)
    assert again.items == items.items  # seeded: the same draws
    night = [it[0] for it in items.items if it[1] == "night"]
    assert night != frames  # each domain draws its own frames (GenVal runs the script once per domain)
    other = DomainWorkItems(src, tmp_path, ["fog"], resolution=H, seed=1)
    assert [it[0] for it in other.items] != frames
    assert len(DomainWorkItems(src, tmp_path, ["fog"], num_samples=7).items) == 7


def test_genval_crops_are_random_squares_of_the_short_side(tmp_path: Path) -> None:
    items = DomainWorkItems(ColumnFrames(3), tmp_path, ["fog"], resolution=H)
    offsets = []
    for k in range(len(items)):
        it = items[k]
        frame, _, _, (draw, position) = items.items[k]
        train = it["label"]
        assert train.shape == (H, H) and it["label_ids"].shape == (H, H)
        assert np.array_equal(LABEL_TO_TRAIN_ID[it["label_ids"]], train)
        assert (train[0] == frame).all()  # the drawn frame
        offset = int(train[1, 0])
        assert np.array_equal(train[1:], np.tile(np.arange(offset, offset + H), (H - 1, 1)))  # an H x H square
        assert offset == int(position * (W - H + 1))
        assert it["draw"] == draw and it["paths"][0].endswith(f"fog_{draw}_city_{frame:06d}_000019_leftImg8bit.png")
        offsets.append(offset)
    # Every offset 0..W-H is possible (random.randint's inclusive range), about equally often.
    counts = np.bincount(offsets, minlength=W - H + 1)
    assert len(counts) == W - H + 1 and counts.min() > 20


def test_genval_crop_of_a_real_frame_is_512_squares_of_side_min_hw(tmp_path: Path, cityscapes_mini: Path) -> None:
    src = CityscapesDataset(cityscapes_mini, split="val")
    ids = np.asarray(Image.open(next((cityscapes_mini / "gtFine/val").rglob("*_gtFine_labelIds.png"))))
    h, w = ids.shape
    items = DomainWorkItems(src, tmp_path, ["fog"], num_samples=4)
    for k in range(4):
        got = items[k]["label_ids"]
        position = items.items[k][3][1]
        x = int(position * (w - h + 1))
        expected = np.asarray(Image.fromarray(ids[:, x : x + h]).resize((512, 512), Image.Resampling.NEAREST))
        assert got.shape == (512, 512) and np.array_equal(got, expected)


def test_genval_prompt_is_gendvals_string_including_the_trailing_separator() -> None:
    gen = DomainShiftGenerator(pipeline=object(), encoding="cityscapes_palette", device="cpu")
    assert gen.prompt_template == GENVAL_PROMPT_TEMPLATE
    for caption, domain in [("a street with cars and trees", "fog"), ("wet road", "night")]:
        assert gen.prompt(domain, caption) == genval_prompt(caption, domain)
    assert gen.prompt("snow", "x") == "x, in snow, "


def test_unknown_protocol_and_genval_with_another_prompt_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown protocol 'genvall'; valid protocols: genval, deterministic_center"):
        DomainWorkItems(ColumnFrames(2), tmp_path, ["fog"], protocol="genvall")  # type: ignore[arg-type]
    assert PROTOCOLS == ("genval", "deterministic_center")
    with pytest.raises(ValueError, match="crop='full' needs protocol 'deterministic_center'"):
        DomainWorkItems(ColumnFrames(2), tmp_path, ["fog"], crop="full")
    gen = DomainShiftGenerator(
        pipeline=object(), encoding="cityscapes_palette", device="cpu", prompt_template="{caption}, in {domain}"
    )
    with pytest.raises(ValueError, match="protocol 'genval' uses GenVal's prompt"):
        generate_domains(str(tmp_path / "o"), ColumnFrames(2), gen, accelerator="cpu", progress=False)
    with pytest.raises(ValueError, match="valid protocols: genval, deterministic_center"):
        generate_domains(str(tmp_path / "o"), ColumnFrames(2), gen, protocol="center", progress=False)  # type: ignore[arg-type]


def test_genval_sets_render_and_read_back(tmp_path: Path, cityscapes_mini: Path) -> None:
    tiny = save_tiny_pipeline(tmp_path / "tiny", kind="controlnet")
    gen = DomainShiftGenerator(
        str(tiny), str(tiny / "controlnet"), encoding="cityscapes_palette", domains=["fog"], caption="a street",
        num_inference_steps=1, device="cpu", dtype="float32",
    )  # fmt: skip
    out = tmp_path / "sets"
    summary = generate_domains(
        str(out), CityscapesDataset(cityscapes_mini, split="val"), gen, num_samples=3, resolution=32,
        accelerator="cpu", devices=1, progress=False,
    )  # fmt: skip
    assert summary["protocol"] == "genval" and summary["written"] == 3 and summary["total"] == 3
    ds = CityscapesDataset(out / "fog", split="val")
    assert sorted(ds[i]["name"].split("_", 2)[1] for i in range(len(ds))) == ["0", "1", "2"]
    assert all(ds[i]["image"].shape == (32, 32, 3) for i in range(len(ds)))
    again = generate_domains(
        str(out), CityscapesDataset(cityscapes_mini, split="val"), gen, num_samples=3, resolution=32,
        accelerator="cpu", devices=1, progress=False,
    )  # fmt: skip
    assert again["written"] == 0 and again["pending_at_start"] == 0
