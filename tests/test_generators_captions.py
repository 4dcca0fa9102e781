"""Caption files (GenVal's JSONL accepted as-is) and the resumable captioning loop with a tiny random BLIP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthrel_lightning.cli import main as cli_main
from synthrel_lightning.data.demo import write_demo_cityscapes
from synthrel_lightning.generators.captions import (
    Captioner,
    CaptionError,
    CaptionFile,
    append_jsonl,
    caption_split,
    frame_key,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Two lines of GenVal's ControlNet/training/train.jsonl, verbatim.
GENVAL_LINES = [
    '{"image": "training/target/train/tubingen/tubingen_000052_000019_leftImg8bit.png", "conditioning_image": '
    '"training/seg/train/tubingen/tubingen_000052_000019_leftImg8bit.png", "text": "there is a man riding a '
    'motorcycle down the street on a crosswalk"}',
    '{"image": "training/target/train/tubingen/tubingen_000037_000019_leftImg8bit.png", "conditioning_image": '
    '"training/seg/train/tubingen/tubingen_000037_000019_leftImg8bit.png", "text": "there are two people riding '
    'bikes down the street in the city"}',
]


def save_tiny_blip(folder: Path) -> Path:
    """A tiny random BLIP captioner (offline WordPiece vocabulary) saved with save_pretrained."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *"abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    tok = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=2, bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3,
                         max_position_embeddings=40),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder / "blip")
    processor.save_pretrained(folder / "blip")
    return folder / "blip"


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("captioner") / "tiny")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_cityscapes(tmp_path_factory.mktemp("demo") / "cs", num_train=5, num_val=1, size=(64, 128))


def test_genval_caption_file_read_as_is_and_matched_by_name(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(GENVAL_LINES) + "\n")
    captions = CaptionFile.read(path)
    assert len(captions) == 2 and "tubingen_000052_000019" in captions
    assert frame_key("x/y/tubingen_000052_000019_gtFine_labelIds.png") == "tubingen_000052_000019"
    by_name, missing = captions.lookup(["tubingen_000037_000019"])
    assert by_name == {"tubingen_000037_000019": "there are two people riding bikes down the street in the city"}
    assert missing == []


def test_missing_frames_error_or_counted_generic(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(GENVAL_LINES[0] + "\n")
    names = ["tubingen_000052_000019", *[f"aachen_{i:06d}_000019" for i in range(7)]]
    with pytest.raises(
        CaptionError, match=r"no caption for 7 of 8 frames \(first: aachen_000000_000019, .*aachen_000004_000019\)"
    ):
        CaptionFile.read(path).lookup(names)
    by_name, missing = CaptionFile.read(path).lookup(names, on_missing="generic", generic="a road")
    assert len(missing) == 7 and by_name["aachen_000003_000019"] == "a road"
    assert by_name["tubingen_000052_000019"].startswith("there is a man")


def test_interrupted_append_and_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    append_jsonl(path, [json.loads(GENVAL_LINES[0])])
    with open(path, "ab") as fh:
        fh.write(b'{"image": "a_leftImg8bit.png", "te')  # killed mid-write
    assert len(CaptionFile.read(path)) == 1
    CaptionFile.read(path, repair=True)
    assert path.read_text().endswith("}\n")
    append_jsonl(path, [{"image": "b_leftImg8bit.png", "conditioning_image": None, "text": "b"}])
    assert set(CaptionFile.read(path).captions) == {"tubingen_000052_000019", "b"}
    path.write_text('{"image": "a.png", "text": "ok"}\n{"text": "no image"}\n')
    with pytest.raises(CaptionError, match=r"c.jsonl:2 is not a caption record"):
        CaptionFile.read(path)
    with pytest.raises(CaptionError, match="does not exist"):
        CaptionFile.read(tmp_path / "none.jsonl")


def test_caption_split_writes_and_resumes(tmp_path: Path, tiny_blip: Path, demo_root: Path, capsys) -> None:
    out = tmp_path / "captions" / "train.jsonl"
    captioner = Captioner(str(tiny_blip), max_new_tokens=8)
    kwargs = dict(split="train", batch_size=2, accelerator="cpu", devices=1, progress=False)
    # An interrupted run: only the first batch finishes.
    first = caption_split(str(demo_root), str(out), captioner=captioner, limit_predict_batches=1, **kwargs)
    assert first["written"] == 2 and first["pending_at_start"] == 5 and first["total"] == 5
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and set(records[0]) == {"image", "conditioning_image", "text"}
    assert records[0]["image"].startswith("leftImg8bit/train/") and records[0]["image"].endswith("_leftImg8bit.png")
    assert records[0]["conditioning_image"].endswith("_gtFine_labelIds.png")
    assert all(isinstance(r["text"], str) and r["text"] for r in records)
    # Resume through the command line: only the three missing frames are captioned.
    cli_main([
        "caption", "--root", str(demo_root), "--out", str(out), "--split", "train", "--batch_size", "2",
        "--accelerator", "cpu", "--devices", "1", "--progress", "false",
        "--captioner", "synthrel_lightning.generators.Captioner", "--captioner.model", str(tiny_blip),
        "--captioner.max_new_tokens", "8",
    ])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 3 and summary["pending_at_start"] == 3
    lines = out.read_text().splitlines()
    assert len(lines) == 5 and len({frame_key(json.loads(x)["image"]) for x in lines}) == 5
    assert lines[:2] == [json.dumps(r, ensure_ascii=False) for r in records]  # earlier lines untouched
    # Nothing left: a third run writes nothing.
    again = caption_split(str(demo_root), str(out), captioner=captioner, **kwargs)
    assert again["written"] == 0 and again["pending_at_start"] == 0
    # The captions of the file are what a later generation reads.
    names = [p.name[: -len("_leftImg8bit.png")] for p in sorted((demo_root / "leftImg8bit/train").rglob("*.png"))]
    by_name, missing = CaptionFile.read(out).lookup(names)
    assert not missing and len(by_name) == 5


def test_caption_output_never_inside_the_dataset(demo_root: Path, tiny_blip: Path) -> None:
    with pytest.raises(ValueError, match="lies inside the dataset folder"):
        caption_split(str(demo_root), str(demo_root / "captions.jsonl"), captioner=Captioner(str(tiny_blip)))
    assert not (demo_root / "captions.jsonl").exists()


def test_captioner_load_error_names_the_model(tmp_path: Path) -> None:
    cap = Captioner(str(tmp_path / "no" / "captioner"))
    with pytest.raises(CaptionError, match="could not load captioner .*no/captioner"):
        cap.configure_model()


@pytest.mark.slow
def test_a_caption_process_that_never_joins_fails_the_other_after_the_timeout(
    tmp_path: Path, tiny_blip: Path, demo_root: Path
) -> None:
    # process 0 of 2, the other never starts: a one-line error after the timeout, not a 30-minute wait
    from tests._process_group import lost_peers_line_of_a_lone_process

    argv = [
        "caption", "--root", str(demo_root), "--out", str(tmp_path / "captions.jsonl"), "--split", "train",
        "--batch_size", "2", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--progress", "false",
        "--captioner", "synthrel_lightning.generators.Captioner", "--captioner.model", str(tiny_blip),
    ]  # fmt: skip
    line = lost_peers_line_of_a_lone_process(argv, "caption")
    assert "This process wrote 0 written;" in line, line
