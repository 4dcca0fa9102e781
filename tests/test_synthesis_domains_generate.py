"""`generate --task domains`: ControlNet domain-shift sets written in the Cityscapes layout, read back, resumed; recipes parse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from synthrel_lightning.cli import main as cli_main
from synthrel_lightning.data.cityscapes import CityscapesDataset
from synthrel_lightning.labels import LABEL_TO_TRAIN_ID, OOD_ID
from synthrel_lightning.synthesis.domains import train_ids_to_label_ids
from synthrel_lightning.synthesis.generate import DomainWorkItems, build_parser
from synthrel_lightning.synthesis.tiny import save_tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
STEM = "frankfurt_000000_000294"
CITY = "frankfurt"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_controlnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd-controlnet-tiny", kind="controlnet")


def write_config(path: Path, out: Path, frames: Path, tiny: Path, **extra) -> Path:
    cfg = {
        "task": "domains",
        "out": str(out),
        "source": {
            "class_path": "synthrel_lightning.data.CityscapesDataset",
            "init_args": {"root": str(frames), "split": "val"},
        },
        "generator": {
            "class_path": "synthrel_lightning.synthesis.DomainShiftGenerator",
            "init_args": {
                "base_model_id": str(tiny),
                "controlnet_id": str(tiny / "controlnet"),
                "domains": ["fog", "night"],
                "caption": "a street",
                "num_inference_steps": 2,
                "device": "cpu",
                "dtype": "float32",
            },
        },
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
    cli_main(["generate", *args])
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

    source = CityscapesDataset(cityscapes_mini, split="val")[0]
    src_ids = np.asarray(Image.open(cityscapes_mini / f"gtFine/val/{CITY}/{STEM}_gtFine_labelIds.png"))
    images = {}
    for domain in ("fog", "night"):
        img_path = out / domain / f"leftImg8bit/val/{CITY}/{STEM}_leftImg8bit.png"
        lbl_path = out / domain / f"gtFine/val/{CITY}/{STEM}_gtFine_labelIds.png"
        assert np.array_equal(np.asarray(Image.open(lbl_path)), src_ids)  # the conditioning map, as label ids
        ds = CityscapesDataset(out / domain, split="val")
        (sample,) = [ds[i] for i in range(len(ds))]
        assert sample["name"] == STEM and sample["image"].shape == source["image"].shape
        assert np.array_equal(sample["label"], source["label"])
        images[domain] = np.asarray(Image.open(img_path))
    assert np.abs(images["fog"].astype(int) - images["night"].astype(int)).mean() > 1  # another prompt and seed

    dm = CityscapesOODDataModule(
        root=cityscapes_mini, train_split="val", num_workers=0, pin_memory=False,
        extra_val_sets={"synthetic_fog": CityscapesDataset(out / "fog", split="val")},
    )  # fmt: skip
    dm.setup("validate")
    assert dm.val_set_names == ["cityscapes", "synthetic_fog"]
    batch = next(iter(dm.val_dataloader()[1]))
    assert batch["image"].shape == (1, 3, 128, 256) and batch["image"].dtype == torch.float32
    assert torch.equal(batch["label"][0], torch.from_numpy(source["label"]).long()) and batch["name"] == [STEM]

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
    fog = out / "fog" / f"leftImg8bit/val/{CITY}/{STEM}_leftImg8bit.png"
    assert fog.stat().st_mtime_ns == mtimes[fog]


class _TrainIdFrames(torch.utils.data.Dataset):
    """Raw samples with train-id labels only (no Cityscapes label-id files to copy)."""

    def __init__(self, image: np.ndarray, label: np.ndarray, name: str) -> None:
        self.image, self.label, self.name = image, label, name

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        return {"image": self.image, "label": self.label, "name": self.name}


def test_work_items_size_seeds_and_label_ids(tmp_path: Path, cityscapes_mini: Path) -> None:
    src = CityscapesDataset(cityscapes_mini, split="val")
    items = DomainWorkItems(src, tmp_path, ["fog", "night", "india"], split="val", resolution=64, seed=0)
    got = [items[i] for i in range(len(items))]
    assert len(got) == 3 and items.total == 3
    assert len({it["seed"] for it in got}) == 3
    assert [it["seed"] for it in got] == [
        DomainWorkItems(src, tmp_path, ["fog", "night", "india"], resolution=64)[i]["seed"] for i in range(3)
    ]
    other_seed = DomainWorkItems(src, tmp_path, ["fog"], seed=1)[0]["seed"]
    assert other_seed != got[0]["seed"]
    for it in got:
        # 256x128 at long side 64 -> 64x32 (multiples of 8); label ids resized nearest like the train ids.
        assert it["label"].shape == (32, 64) and it["label_ids"].shape == (32, 64)
        assert np.array_equal(LABEL_TO_TRAIN_ID[it["label_ids"]], it["label"])
        assert it["image_path"].endswith(f"{it['domain']}/leftImg8bit/val/{CITY}/{STEM}_leftImg8bit.png")
    # Default size: the frame's, snapped to multiples of 8 (here already).
    assert DomainWorkItems(src, tmp_path, ["fog"])[0]["label"].shape == (128, 256)
    # A source with train ids only: label ids come from the inverse table; the city from the name.
    train_ids = np.asarray(Image.open(cityscapes_mini / f"gtFine/val/{CITY}/{STEM}_gtFine_labelTrainIds.png"))
    image = np.zeros((*train_ids.shape, 3), np.uint8)
    it = DomainWorkItems(_TrainIdFrames(image, train_ids, STEM), tmp_path, ["fog"])[0]
    assert np.array_equal(LABEL_TO_TRAIN_ID[it["label_ids"]], train_ids)
    assert it["label_path"].endswith(f"fog/gtFine/val/{CITY}/{STEM}_gtFine_labelIds.png")
    with pytest.raises(ValueError, match="domain names become folder names"):
        DomainWorkItems(src, tmp_path, ["fog/night"])


def test_train_ids_to_label_ids_round_trip_and_errors(cityscapes_mini: Path) -> None:
    train_ids = np.asarray(Image.open(cityscapes_mini / f"gtFine/val/{CITY}/{STEM}_gtFine_labelTrainIds.png"))
    ids = train_ids_to_label_ids(train_ids)
    assert np.array_equal(LABEL_TO_TRAIN_ID[ids], train_ids) and ids[train_ids == 255].max(initial=0) == 0
    assert train_ids_to_label_ids(np.arange(19, dtype=np.uint8)).tolist() == [
        7,
        8,
        11,
        12,
        13,
        17,
        19,
        20,
        21,
        22,
        23,
        24,
        25,
        26,
        27,
        28,
        31,
        32,
        33,
    ]
    bad = train_ids.copy()
    bad[0, 0] = OOD_ID
    with pytest.raises(ValueError, match=r"frame x holds values \[254\]"):
        train_ids_to_label_ids(bad, what="frame x")


def test_cli_rejects_options_of_the_other_task(
    tmp_path: Path, cityscapes_mini: Path, tiny_controlnet: Path, capsys
) -> None:
    cfg = write_config(tmp_path / "d.yaml", tmp_path / "o", cityscapes_mini, tiny_controlnet)
    with pytest.raises(SystemExit):
        cli_main(["generate", "--config", str(cfg), "--bank", str(tmp_path / "bank")])
    assert "bank belong to task 'objects'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["generate", "--config", str(cfg), "--out", "null"])
    assert "task 'domains' needs --out" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_generate_recipes_parse_and_match_correlate_recipe() -> None:
    parser = build_parser()
    train = parser.parse_args(["--config", str(REPO / "recipes/generate_sd_inpainting.yaml")])
    assert train.task == "objects" and train.bank == "data/outlier_bank/train" and train.write == "object"
    assert train.source.init_args.split == "train"
    eng = train.engine.init_args
    assert (eng.guidance_scale, eng.strength, eng.dtype, eng.resolution) == (15.0, 1.0, "float16", 512)
    val = parser.parse_args(["--config", str(REPO / "recipes/generate_sd_inpainting_val.yaml")])
    assert (
        val.bank == "data/outlier_bank/val"
        and val.write == "both"
        and val.eval_dir
        and val.source.init_args.split == "val"
    )
    dom = parser.parse_args(["--config", str(REPO / "recipes/generate_domains.yaml")])
    gen = dom.generator.init_args
    assert dom.task == "domains" and dom.source.init_args.split == "val" and dom.split == "val"
    assert (gen.num_inference_steps, gen.guidance_scale, gen.conditioning_scale, gen.prompt_template) == (
        25,
        8.0,
        1.0,
        "{caption}, in {domain}",
    )
    assert list(gen.domains) == ["fog", "night", "rain", "snow"]
    # recipes/correlate_cityscapes.yaml reads these sets back as Cityscapes val.
    corr = yaml.safe_load((REPO / "recipes/correlate_cityscapes.yaml").read_text())
    extra = corr["data"]["init_args"]["extra_val_sets"]
    synthetic = {k: v for k, v in extra.items() if k.startswith("synthetic_")}
    assert synthetic
    for name, spec in synthetic.items():
        assert spec["class_path"].endswith("CityscapesDataset")
        assert spec["init_args"] == {"root": f"{dom.out}/{name.removeprefix('synthetic_')}", "split": dom.split}
        assert name.removeprefix("synthetic_") in gen.domains


def _save_tiny_blip(folder: Path) -> Path:
    """A tiny random BLIP captioner (offline WordPiece vocabulary) saved with save_pretrained."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *"abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    tok = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3, max_position_embeddings=40),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8),
        projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder / "blip")
    processor.save_pretrained(folder / "blip")
    return folder / "blip"


def test_captioner_model_makes_the_prompt(tmp_path: Path, cityscapes_mini: Path) -> None:
    from synthrel_lightning.synthesis.domains import DomainShiftGenerator
    from synthrel_lightning.synthesis.engine import ModelLoadError
    from synthrel_lightning.synthesis.tiny import build_tiny_controlnet_pipeline

    sample = CityscapesDataset(cityscapes_mini, split="val")[0]
    label, image = sample["label"][::4, ::4].copy(), sample["image"]
    blip = _save_tiny_blip(tmp_path / "captioner")
    gen = DomainShiftGenerator(
        pipeline=build_tiny_controlnet_pipeline(0),
        caption=str(blip),
        device="cpu",
        dtype="float32",
        num_inference_steps=1,
    )
    caption = gen.caption_for(image)
    assert caption and caption != "a photo of a city street with cars, buildings and trees"
    (out,) = gen.generate([label], ["rain"], [0], images=[image])
    assert out.prompt == f"{caption}, in rain" and out.image.shape == (*label.shape, 3)
    with pytest.raises(ModelLoadError, match="could not load image captioner"):
        DomainShiftGenerator(caption=str(tmp_path / "no" / "captioner"), device="cpu").caption_for(image)
