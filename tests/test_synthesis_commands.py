"""The GPU-free path from the command line: `fill_bank` from a COCO-format set and `generate` with the tiny engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthrel_lightning.cli import main as cli_main
from synthrel_lightning.synthesis.bank import OutlierBank

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAME = "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"


@pytest.fixture
def coco_set(tmp_path: Path, cityscapes_mini: Path) -> tuple[Path, Path]:
    """A COCO-format set: the real frame with two polygon objects, plus an image the file names but lacks."""
    images = tmp_path / "images"
    images.mkdir()
    Image.open(cityscapes_mini / FRAME).save(images / "frame.png")
    poly = [[20, 60, 80, 60, 80, 110, 20, 110]]
    data = {
        "images": [
            {"id": 1, "file_name": "frame.png", "height": 128, "width": 256},
            {"id": 2, "file_name": "lost.png", "height": 128, "width": 256},
        ],
        "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "slab"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "area": 3000, "segmentation": poly},
            {"id": 2, "image_id": 1, "category_id": 2, "area": 2000, "segmentation": [[150, 40, 200, 40, 175, 90]]},
            {"id": 3, "image_id": 2, "category_id": 1, "area": 3000, "segmentation": poly},
        ],
    }
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    return ann, images


def test_fill_bank_command_from_coco(tmp_path: Path, coco_set: tuple[Path, Path], capsys) -> None:
    ann, images = coco_set
    bank = tmp_path / "bank"
    args = [
        "fill_bank",
        "--bank", str(bank),
        "--n", "5",
        "--source", "synthrel_lightning.synthesis.CocoObjectSource",
        "--source.annotation_json", str(ann),
        "--source.image_root", str(images),
        "--source.min_area", "100",
        "--source.on_missing", "skip",
        "--json", "true",
    ]  # fmt: skip
    cli_main(args)
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert (report["produced"], report["skipped"], report["failed"], report["missing_images"]) == (5, 0, 0, 1)
    assert f"-> {bank}" in err and "1 source images missing" in err
    entries = [e for _, e in OutlierBank(bank, mode="r").iter_entries()]
    assert (
        len(entries) == 5
        and {e.name for e in entries} <= {"box", "slab"}
        and all(e.model == "coco-paste" for e in entries)
    )
    # Resumable: a rerun adds nothing; a larger n adds only the new items.
    cli_main([*args[:4], "7", *args[5:]])
    again = json.loads(capsys.readouterr().out)
    assert (again["produced"], again["skipped"]) == (2, 5)
    # Without the opt-in, the missing image is an error that names it (when drawn).
    with pytest.raises(SystemExit, match="lost.png"):
        cli_main(
            [a for a in args if a not in ("--source.on_missing", "skip")][:4] + ["20", *args[5:-4], "--json", "true"]
        )


def test_generate_command_with_the_tiny_offline_engine(tmp_path: Path, cityscapes_mini: Path, capfd) -> None:
    bank, eval_dir = tmp_path / "bank", tmp_path / "eval"
    cli_main(
        [
            "generate",
            "--bank", str(bank),
            "--eval_dir", str(eval_dir),
            "--write", "both",
            "--source", "synthrel_lightning.data.CityscapesDataset",
            "--source.root", str(cityscapes_mini),
            "--source.split", "val",
            "--engine", "synthrel_lightning.testing.TinyInpaintingEngine",
            "--vocabulary", "[lion, zebra]",
            "--objects_per_frame", "2",
            "--accelerator", "cpu",
            "--devices", "1",
            "--json", "true",
        ]
    )  # fmt: skip
    out, err = capfd.readouterr()
    summary = json.loads(out[out.index("{") :])
    assert summary["done"] + summary["rejected"] == 2 and summary["failed"] == 0 and summary["done"] >= 1
    assert summary["engine"]["inpainted"] == 2
    # A progress bar over items with the outcome counts, then a report of what went where.
    assert "generate:" in err and "item" in err and "done=" in err
    assert f"outlier bank: {bank}" in err and f"{eval_dir}/images" in err
    assert len(list((eval_dir / "images").glob("*.png"))) == summary["done"]
    entry = next(e for _, e in OutlierBank(bank, mode="r").iter_entries())
    assert entry.model == "tiny-random-sd-inpainting" and entry.name in ("lion", "zebra")
    assert np.asarray(entry.rgb).dtype == np.uint8
