"""Domain-shift rendering: the generator (encodings, 1-channel ControlNets, captions), the ``domains`` command
writing Cityscapes-layout sets that read back and resume, and joint shift + OOD-object sets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from synthrel_lightning.cli import main as cli_main
from synthrel_lightning.data.cityscapes import CityscapesDataset
from synthrel_lightning.data.synthetic import SyntheticFramesDataset
from synthrel_lightning.generators.domain_generation import DomainWorkItems
from synthrel_lightning.generators.domains import DomainShiftGenerator
from synthrel_lightning.generators.encodings import ENCODINGS, EncodingError, write_encoding_file
from synthrel_lightning.labels import LABEL_TO_TRAIN_ID, OOD_ID
from synthrel_lightning.testing import build_tiny_components, build_tiny_controlnet_pipeline, save_tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
STEM = "frankfurt_000000_000294"
CITY = "frankfurt"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_controlnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd-controlnet-tiny", kind="controlnet")


@pytest.fixture(scope="module")
def label_map(cityscapes_mini: Path) -> np.ndarray:
    path = cityscapes_mini / f"gtFine/val/{CITY}/{STEM}_gtFine_labelTrainIds.png"
    return np.asarray(Image.open(path))[::4, ::4].copy()  # 32x64 train ids


def one_channel_pipeline(seed: int = 0):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    parts = build_tiny_components(seed, unet_in_channels=4)
    torch.manual_seed(seed + 3)
    controlnet = ControlNetModel.from_unet(
        parts["unet"], conditioning_channels=1, conditioning_embedding_out_channels=(16, 32)
    )
    with torch.no_grad():  # from_unet zero-initialises the outputs; give them weights so the map matters
        for conv in [
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
            controlnet.controlnet_cond_embedding.conv_out,
        ]:
            torch.nn.init.normal_(conv.weight, std=0.1)
    pipe = StableDiffusionControlNetPipeline(
        **parts, controlnet=controlnet, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_generator_renders_each_domain_deterministically(label_map: np.ndarray) -> None:
    gen = DomainShiftGenerator(
        pipeline=build_tiny_controlnet_pipeline(0), encoding="cityscapes_palette", device="cpu",
        num_inference_steps=2, caption="a street",
    )  # fmt: skip
    out = gen.generate([label_map, label_map], ["fog", "night"], [0, 0])
    assert [s.domain for s in out] == ["fog", "night"] and out[0].prompt == "a street, in fog, "
    for s in out:
        assert s.image.shape == (*label_map.shape, 3) and s.image.dtype == np.uint8
        assert np.array_equal(s.label, label_map)
    assert type(gen.pipeline.scheduler).__name__ == "DDIMScheduler"
    assert not np.array_equal(out[0].image, out[1].image)
    again = gen.generate([label_map], ["fog"], [0])[0]
    assert np.abs(again.image.astype(int) - out[0].image.astype(int)).max() <= 1
    # The label map conditions the image: another map, same seed and prompt -> another image.
    other = gen.generate([np.full_like(label_map, 10)], ["fog"], [0])[0]
    assert np.abs(other.image.astype(int) - out[0].image.astype(int)).mean() > 0.05
    # Per-frame captions win over the fixed one.
    (s,) = gen.generate([label_map], ["rain"], [0], captions=["two cyclists"])
    assert s.prompt == "two cyclists, in rain, "


def test_fixed_caption_with_a_slash_stays_a_plain_string(label_map: np.ndarray) -> None:
    gen = DomainShiftGenerator(
        pipeline=build_tiny_controlnet_pipeline(0), encoding="cityscapes_palette", device="cpu",
        num_inference_steps=1, caption="street w/ cars",
    )  # fmt: skip
    (s,) = gen.generate([label_map[:32, :32]], ["snow"], [0])
    assert s.prompt == "street w/ cars, in snow, "


def test_one_channel_controlnet_renders_and_channel_mismatch_is_named(label_map: np.ndarray) -> None:
    pipe = one_channel_pipeline()
    gen = DomainShiftGenerator(pipeline=pipe, encoding="label_ids_1ch", device="cpu", num_inference_steps=2)
    a, b = gen.generate([label_map, np.full_like(label_map, 10)], ["fog", "fog"], [0, 0])
    assert a.image.shape == (*label_map.shape, 3)
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 0.05  # the 1-channel map steers it
    wrong = DomainShiftGenerator(pipeline=pipe, encoding="ade20k_palette", device="cpu", num_inference_steps=1)
    with pytest.raises(
        EncodingError, match=r"'ade20k_palette' has 3 channel\(s\) but the ControlNet expects conditioning_channels=1"
    ):
        wrong.generate([label_map], ["fog"], [0])
    bare = DomainShiftGenerator(pipeline=pipe, device="cpu", num_inference_steps=1)
    with pytest.raises(EncodingError, match="conditioning encoding is unknown; pass encoding="):
        bare.generate([label_map], ["fog"], [0])
    ood = label_map.copy()
    ood[0, 0] = OOD_ID
    with pytest.raises(EncodingError, match=r"holds values \[254\]"):
        gen.generate([ood], ["fog"], [0])


def test_saved_folder_encoding_file_warning_and_check(
    tmp_path: Path, tiny_controlnet: Path, label_map: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    small = label_map
    with caplog.at_level(logging.WARNING):
        gen = DomainShiftGenerator(
            str(tiny_controlnet), str(tiny_controlnet / "controlnet"), encoding="ade20k_palette", device="cpu",
            num_inference_steps=1,
        )  # fmt: skip
        (s,) = gen.generate([small], ["snow"], [1])
    assert s.image.shape == (*small.shape, 3) and "in snow" in s.prompt
    assert "has no synthrel_encoding.json" in caplog.text
    with pytest.raises(EncodingError, match="has no synthrel_encoding.json"):
        _ = DomainShiftGenerator(str(tiny_controlnet), str(tiny_controlnet / "controlnet"), device="cpu").encoding
    labelled = tmp_path / "cn"
    import shutil

    shutil.copytree(tiny_controlnet / "controlnet", labelled)
    write_encoding_file(labelled, "label_ids_1ch")
    with pytest.raises(
        EncodingError, match=r"'label_ids_1ch' has 1 channel\(s\) but ControlNet .* conditioning_channels=3"
    ):
        _ = DomainShiftGenerator(str(tiny_controlnet), str(labelled), device="cpu").encoding


def write_config(path: Path, out: Path, frames: Path, tiny: Path, **extra) -> Path:
    cfg = {
        "out": str(out),
        "source": {
            "class_path": "synthrel_lightning.data.CityscapesDataset",
            "init_args": {"root": str(frames), "split": "val"},
        },
        "generator": {
            "class_path": "synthrel_lightning.generators.DomainShiftGenerator",
            "init_args": {
                "base_model_id": str(tiny),
                "controlnet_id": str(tiny / "controlnet"),
                "encoding": "cityscapes_palette",
                "domains": ["fog", "night"],
                "caption": "a street",
                "num_inference_steps": 2,
                "device": "cpu",
                "dtype": "float32",
            },
        },
        "protocol": "deterministic_center",
        "crop": "full",
        "resolution": 64,
        "seed": 5,
        "batch_size": 2,
        "accelerator": "cpu",
        "devices": 1,
        "progress": False,
    }
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    cli_main(["domains", *args])
    out = capsys.readouterr().out
    return json.loads(out[out.index("{") :])


def test_domains_end_to_end_read_back_and_resume(
    tmp_path: Path, cityscapes_mini: Path, tiny_controlnet: Path, capsys
) -> None:
    from synthrel_lightning.data.datamodule import CityscapesOODDataModule

    out = tmp_path / "synthetic_domains"
    cfg = write_config(tmp_path / "domains.yaml", out, cityscapes_mini, tiny_controlnet)
    summary = run(["--config", str(cfg)], capsys)
    assert summary["written"] == 2 and summary["per_domain"] == {"fog": 1, "night": 1} and summary["split"] == "val"
    assert summary["encoding"] == "cityscapes_palette"

    # Full frame at long side 64: the label ids resized with NEAREST are the ground truth.
    src_ids = np.asarray(
        Image.open(cityscapes_mini / f"gtFine/val/{CITY}/{STEM}_gtFine_labelIds.png").resize((64, 32), Image.NEAREST)
    )
    src_train = LABEL_TO_TRAIN_ID[src_ids]
    images = {}
    for domain in ("fog", "night"):
        img_path = out / domain / f"leftImg8bit/val/{CITY}/{STEM}_leftImg8bit.png"
        lbl_path = out / domain / f"gtFine/val/{CITY}/{STEM}_gtFine_labelIds.png"
        assert np.array_equal(np.asarray(Image.open(lbl_path)), src_ids)  # the conditioning map, as label ids
        ds = CityscapesDataset(out / domain, split="val")
        (sample,) = [ds[i] for i in range(len(ds))]
        assert sample["name"] == STEM and sample["image"].shape == (32, 64, 3)
        assert np.array_equal(sample["label"], src_train)
        images[domain] = np.asarray(Image.open(img_path))
    assert np.abs(images["fog"].astype(int) - images["night"].astype(int)).mean() > 1  # another prompt and seed

    dm = CityscapesOODDataModule(
        root=cityscapes_mini, train_split="val", num_workers=0, pin_memory=False,
        extra_val_sets={"synthetic_fog": CityscapesDataset(out / "fog", split="val")},
    )  # fmt: skip
    dm.setup("validate")
    assert dm.val_set_names == ["cityscapes", "synthetic_fog"]
    batch = next(iter(dm.val_dataloader()[1]))
    assert batch["image"].shape == (1, 3, 32, 64) and batch["image"].dtype == torch.float32
    assert torch.equal(batch["label"][0], torch.from_numpy(src_train).long()) and batch["name"] == [STEM]

    # Resume: nothing left to do, nothing rewritten.
    files = sorted(p for p in out.rglob("*.png"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    summary = run(["--config", str(cfg)], capsys)
    assert summary["written"] == 0 and summary["pending_at_start"] == 0 and summary["total"] == 2
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    assert not list(out.rglob(".tmp-*"))
    # A frame whose image is missing (killed between the two writes) is redone, identically.
    night = out / "night" / f"leftImg8bit/val/{CITY}/{STEM}_leftImg8bit.png"
    night.unlink()
    summary = run(["--config", str(cfg)], capsys)
    assert summary["written"] == 1 and summary["per_domain"] == {"night": 1}
    assert np.abs(np.asarray(Image.open(night)).astype(int) - images["night"].astype(int)).max() <= 1


def test_caption_file_drives_prompts_and_missing_frames(
    tmp_path: Path, cityscapes_mini: Path, tiny_controlnet: Path, capsys
) -> None:
    from synthrel_lightning.generators.domain_generation import DomainDataModule, DomainGenerationModule

    captions = tmp_path / "val.jsonl"
    captions.write_text(
        json.dumps({"image": f"x/{STEM}_leftImg8bit.png", "conditioning_image": None, "text": "wet road"}) + "\n"
    )
    src = CityscapesDataset(cityscapes_mini, split="val")
    dm = DomainDataModule(src, str(tmp_path / "o"), ["fog"], crop="square", resolution=32, captions=str(captions))
    dm.setup("predict")
    item = dm.items[0]
    assert item["caption"] == "wet road" and item["label_ids"].shape == (32, 32)
    gen = DomainShiftGenerator(
        pipeline=build_tiny_controlnet_pipeline(0), encoding="cityscapes_palette", device="cpu", num_inference_steps=1
    )
    ((_, sample),) = DomainGenerationModule(gen).predict_step([item], 0)
    assert sample.prompt == "wet road, in fog, " and sample.image.shape == (32, 32, 3)
    # A caption file without this frame: a clear error, or (opt-in) the generic caption, counted.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"image": "aachen_000000_000019_leftImg8bit.png", "text": "x"}) + "\n")
    cfg = write_config(tmp_path / "d.yaml", tmp_path / "out", cityscapes_mini, tiny_controlnet, captions=str(other))
    with pytest.raises(SystemExit, match=rf"no caption for 1 of 1 frames \(first: {STEM}\)"):  # exit status 2
        run(["--config", str(cfg)], capsys)
    summary = run(
        ["--config", str(cfg), "--on_missing_caption", "generic", "--crop", "square", "--resolution", "32"], capsys
    )
    assert summary["missing_captions"] == 1 and summary["written"] == 2


def test_work_items_square_crop_full_frame_seeds_and_label_ids(tmp_path: Path, cityscapes_mini: Path) -> None:
    src = CityscapesDataset(cityscapes_mini, split="val")
    items = DomainWorkItems(
        src, tmp_path, ["fog", "night", "india"], split="val", crop="full", resolution=64, seed=0,
        protocol="deterministic_center",
    )  # fmt: skip
    got = [items[i] for i in range(len(items))]
    assert len(got) == 3 and items.total == 3 and len({it["seed"] for it in got}) == 3
    other_seed = DomainWorkItems(src, tmp_path, ["fog"], seed=1, protocol="deterministic_center")[0]["seed"]
    assert other_seed != got[0]["seed"]
    for it in got:
        # 256x128 at long side 64 -> 64x32 (multiples of 8); label ids resized nearest, train ids follow.
        assert it["label"].shape == (32, 64) and it["label_ids"].shape == (32, 64)
        assert np.array_equal(LABEL_TO_TRAIN_ID[it["label_ids"]], it["label"])
        assert it["paths"][0].endswith(f"{it['domain']}/leftImg8bit/val/{CITY}/{STEM}_leftImg8bit.png")
    # The deterministic protocol: the centred square, 512x512, NEAREST (no new label values).
    src_ids = np.asarray(Image.open(cityscapes_mini / f"gtFine/val/{CITY}/{STEM}_gtFine_labelIds.png"))
    sq = DomainWorkItems(src, tmp_path, ["fog"], protocol="deterministic_center")[0]["label_ids"]
    assert sq.shape == (512, 512) and set(np.unique(sq)) <= set(np.unique(src_ids))
    assert np.array_equal(sq[::4, ::4], src_ids[:, 64:192])  # 128x128 centre square, upsampled x4 by NEAREST
    with pytest.raises(ValueError, match="cannot be used as a file or folder name"):
        DomainWorkItems(src, tmp_path, ["fog/night"])
    with pytest.raises(ValueError, match="pass ood_objects"):
        DomainWorkItems(src, tmp_path, ["fog"], sets="joint")


def test_joint_shift_and_ood_set_round_trip(tmp_path: Path, cityscapes_mini: Path, tiny_controlnet: Path) -> None:
    from synthrel_lightning.generators.domain_generation import generate_domains
    from synthrel_lightning.synthesis.sources import ProceduralObjectSource

    out = tmp_path / "sets"
    gen = DomainShiftGenerator(
        str(tiny_controlnet), str(tiny_controlnet / "controlnet"), encoding="cityscapes_palette",
        domains=["fog"], caption="a street", num_inference_steps=1, device="cpu", dtype="float32",
    )  # fmt: skip
    summary = generate_domains(
        str(out), CityscapesDataset(cityscapes_mini, split="val"), gen, protocol="deterministic_center",
        crop="square", resolution=64, sets="both",
        ood_objects=ProceduralObjectSource(size_range=(24, 48)), accelerator="cpu", devices=1, progress=False,
    )  # fmt: skip
    assert summary["written"] == 2 and summary["joint"] == 1 and summary["per_domain"] == {"fog": 1, "fog-ood": 1}
    shift = CityscapesDataset(out / "fog", split="val")[0]
    joint_set = SyntheticFramesDataset(out / "fog-ood")
    assert len(joint_set) == 1
    joint = joint_set[0]
    assert joint["name"] == STEM and joint["image"].shape == (64, 64, 3)
    obj = joint["label"] == OOD_ID
    assert obj.any() and np.array_equal(joint["ood"][obj], np.ones(obj.sum(), np.uint8))
    # Outside the object the ground truth is the shifted set's (the same conditioning map).
    assert np.array_equal(joint["label"][~obj], shift["label"][~obj])
    assert set(np.unique(joint["ood"][~obj])) <= {0, 255}
    # Evaluates as a named set beside the others.
    from synthrel_lightning.data.datamodule import CityscapesOODDataModule

    dm = CityscapesOODDataModule(
        root=cityscapes_mini, train_split="val", num_workers=0, pin_memory=False,
        extra_val_sets={"synthetic_fog_ood": joint_set},
    )  # fmt: skip
    dm.setup("validate")
    assert dm.val_set_names == ["cityscapes", "synthetic_fog_ood"]
    batch = next(iter(dm.val_dataloader()[1]))
    assert int((batch["ood"] == 1).sum()) == int(obj.sum())


def test_recipes_parse_and_match_correlate_recipe() -> None:
    from synthrel_lightning.commands.domains import build_parser

    dom = build_parser().parse_args(["--config", str(REPO / "recipes/generate_domains.yaml")])
    gen = dom.generator.init_args
    assert dom.source.init_args.split == "val" and dom.split == "val" and dom.crop == "square" and dom.resolution == 512
    assert (gen.num_inference_steps, gen.eta, gen.guidance_scale, gen.conditioning_scale, gen.prompt_template) == (
        25, 0.0, 8.0, 1.0, "{caption}, in {domain}, ",
    )  # fmt: skip
    assert dom.protocol == "genval" and dom.num_samples == 512
    assert gen.controlnet_id == "lllyasviel/sd-controlnet-seg" and gen.encoding == "ade20k_palette"
    assert list(gen.domains) == ["fog", "night", "rain", "snow"]
    assert ENCODINGS[gen.encoding].channels == 3
    corr = yaml.safe_load((REPO / "recipes/correlate_cityscapes.yaml").read_text())
    extra = corr["data"]["init_args"]["extra_val_sets"]
    synthetic = {k: v for k, v in extra.items() if k.startswith("synthetic_")}
    assert synthetic
    for name, spec in synthetic.items():
        assert spec["class_path"].endswith("CityscapesDataset")
        assert spec["init_args"] == {"root": f"{dom.out}/{name.removeprefix('synthetic_')}", "split": dom.split}
        assert name.removeprefix("synthetic_") in gen.domains


def test_generate_points_domain_users_to_the_domains_command() -> None:
    with pytest.raises(SystemExit, match="python -m synthrel_lightning domains"):
        cli_main(
            [
                "generate",
                "--task",
                "domains",
                "--bank",
                "x",
                "--source",
                "synthrel_lightning.data.CityscapesDataset",
                "--source.root",
                "x",
            ]
        )


def test_domains_command_builds_the_joint_set_options(cityscapes_mini: Path) -> None:
    from synthrel_lightning.commands.domains import build_parser
    from synthrel_lightning.synthesis.sources import ProceduralObjectSource

    parser = build_parser()
    cfg = parser.parse_args([
        "--config", str(REPO / "recipes/generate_domains.yaml"), "--source.root", str(cityscapes_mini),
        "--sets", "both", "--ood_objects", "synthrel_lightning.synthesis.ProceduralObjectSource",
        "--ood_objects.size_range", "[16, 32]",
    ])  # fmt: skip
    init = parser.instantiate(cfg)
    assert isinstance(init.ood_objects, ProceduralObjectSource) and init.ood_objects.size_range == (16, 32)
    assert init.sets == "both" and isinstance(init.generator, DomainShiftGenerator)
    assert init.generator.requested_encoding == "ade20k_palette"


class _NamedFrames(torch.utils.data.Dataset):
    """A custom source whose frame names try to leave the output folder."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        label = np.zeros((16, 32), dtype=np.int64)
        return {"image": torch.zeros(3, 16, 32), "label": torch.from_numpy(label), "name": self.names[index]}


@pytest.mark.parametrize("bad", ["../../escaped", "/abs/escaped", "city_../../x", ".git"])
def test_frame_names_cannot_move_domain_writes_outside_the_output_folder(tmp_path: Path, bad: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="cannot be used as a file or folder name|leaves its output folder"):
        DomainWorkItems(_NamedFrames([bad]), out, ["fog"], crop="full", resolution=32, protocol="deterministic_center")
    assert not any(p for p in tmp_path.rglob("*escaped*"))


@pytest.mark.slow
def test_a_domains_process_that_never_joins_fails_the_other_after_the_timeout(
    tmp_path: Path, cityscapes_mini: Path, tiny_controlnet: Path
) -> None:
    # process 0 of 2, the other never starts: a one-line error after the timeout, not a 30-minute wait
    from tests._process_group import lost_peers_line_of_a_lone_process

    out = tmp_path / "synthetic_domains"
    cfg = write_config(tmp_path / "domains.yaml", out, cityscapes_mini, tiny_controlnet, devices=2, strategy="ddp")
    line = lost_peers_line_of_a_lone_process(["domains", "--config", str(cfg)], "domains")
    assert "This process wrote 0 written, 0 joint;" in line, line
    assert not out.exists() or not list(out.rglob("*.png"))
