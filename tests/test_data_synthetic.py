"""SyntheticFramesDataset on frames with inpainted objects written by `generate` (eval_dir), and its error paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from synthrel_lightning.commands.generate import main as generate_main
from synthrel_lightning.data import SyntheticFramesDataset
from synthrel_lightning.data.io import DatasetError
from synthrel_lightning.labels import OOD_ID
from synthrel_lightning.testing import save_tiny_pipeline


@pytest.fixture(scope="module")
def eval_dir(cityscapes_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic frames (one real Cityscapes frame, two inpainted objects) written by `generate`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tmp = tmp_path_factory.mktemp("synthetic")
        tiny = save_tiny_pipeline(tmp / "sd-inpaint-tiny")
        cfg = {
            "bank": str(tmp / "bank"),
            "eval_dir": str(tmp / "eval"),
            "write": "frame",
            "source": {
                "class_path": "synthrel_lightning.data.CityscapesDataset",
                "init_args": {"root": str(cityscapes_mini), "split": "val"},
            },
            "engine": {
                "model_id": str(tiny),
                "device": "cpu",
                "dtype": "float32",
                "num_inference_steps": 2,
                "resolution": 64,
                "mask_method": "changed",
            },
            "vocabulary": ["elephant", "lion"],
            "objects_per_frame": 2,
            "seed": 0,
            "batch_size": 2,
            "accelerator": "cpu",
            "devices": 1,
            "progress": False,
        }
        (tmp / "gen.yaml").write_text(yaml.safe_dump(cfg))
        generate_main(["--config", str(tmp / "gen.yaml")])
    finally:
        torch.set_num_threads(n)
    return tmp / "eval"


@pytest.fixture
def copy(eval_dir: Path, tmp_path: Path) -> Path:
    """A scratch copy of the evaluation set to break."""
    return Path(shutil.copytree(eval_dir, tmp_path / "eval"))


def test_reads_generated_frames(eval_dir: Path, cityscapes_mini: Path) -> None:
    from synthrel_lightning.data.cityscapes import CityscapesDataset
    from synthrel_lightning.data.transforms import eval_transform

    ds = SyntheticFramesDataset(eval_dir)
    assert ds.has_ood and ds.has_semantics and len(ds) == 2
    assert ds.names == sorted(p.stem for p in (eval_dir / "images").glob("*.png"))
    real = CityscapesDataset(cityscapes_mini, split="val")[0]
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == real["image"].shape and s["image"].dtype == np.uint8
        ood_px = s["label"] == OOD_ID
        assert ood_px.any()
        # The object's pixels are OOD; elsewhere the real frame's semantics are kept.
        assert np.array_equal(s["label"][~ood_px], real["label"][~ood_px])
        assert np.array_equal(s["ood"] == 1, ood_px) and np.array_equal(s["ood"] == 255, s["label"] == 255)
        assert set(np.unique(s["ood"])) <= {0, 1, 255}
        stored = np.asarray(Image.open(eval_dir / "labels" / f"{s['name']}_ood.png"))
        assert np.array_equal(stored, s["ood"])
        # Some pixels of the synthetic frame differ from the real one (the object).
        assert (s["image"] != real["image"]).any()
    t = SyntheticFramesDataset(eval_dir, transform=eval_transform(), max_samples=1)
    assert len(t) == 1
    sample = t[0]
    assert (
        sample["image"].shape == (3, 128, 256)
        and sample["ood"].dtype == torch.int64
        and int((sample["ood"] == 1).sum()) > 0
    )


def test_missing_root_and_layout(tmp_path: Path, copy: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        SyntheticFramesDataset(tmp_path / "nowhere")
    shutil.rmtree(copy / "labels")
    with pytest.raises(DatasetError, match="expected folder 'labels'"):
        SyntheticFramesDataset(copy)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    with pytest.raises(DatasetError, match=r"no files match 'images/\*.png'"):
        SyntheticFramesDataset(empty)


def test_image_without_label(copy: Path) -> None:
    first, second = sorted((copy / "images").glob("*.png"))
    (copy / "labels" / f"{first.stem}_labelTrainIds.png").unlink()
    with pytest.raises(DatasetError, match=f"has no label file: expected .*{first.stem}_labelTrainIds.png"):
        SyntheticFramesDataset(copy)
    ds = SyntheticFramesDataset(copy, on_error="skip")
    assert ds.names == [second.stem] and ds.num_skipped == 1


def test_corrupt_file_raises_or_is_skipped(copy: Path) -> None:
    first, second = sorted((copy / "images").glob("*.png"))
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=f"{first.name} is corrupt or truncated"):
        SyntheticFramesDataset(copy)[0]
    ds = SyntheticFramesDataset(copy, on_error="skip")
    assert ds[0]["name"] == second.stem and ds.skipped[0].name == first.stem


def test_size_mismatch_and_bad_label_values(copy: Path) -> None:
    first, second = sorted((copy / "images").glob("*.png"))
    lbl_path = copy / "labels" / f"{first.stem}_labelTrainIds.png"
    lbl = np.asarray(Image.open(lbl_path))
    Image.fromarray(lbl[:, :-8].copy()).save(lbl_path)
    with pytest.raises(DatasetError, match=r"is 248x128 \(WxH\) but image .* is 256x128"):
        SyntheticFramesDataset(copy)[0]
    lbl_path = copy / "labels" / f"{second.stem}_labelTrainIds.png"
    lbl = np.asarray(Image.open(lbl_path)).copy()
    lbl[:3, :3] = 100
    Image.fromarray(lbl).save(lbl_path)
    with pytest.raises(DatasetError, match=r"contains unexpected train ids .*\{100\} \(100: 9 px\)"):
        SyntheticFramesDataset(copy)[1]


def test_ood_file_must_agree_with_label(copy: Path) -> None:
    first = sorted((copy / "images").glob("*.png"))[0]
    ood_path = copy / "labels" / f"{first.stem}_ood.png"
    ood = np.asarray(Image.open(ood_path)).copy()
    ood[ood == 1] = 0
    Image.fromarray(ood).save(ood_path)
    with pytest.raises(DatasetError, match=f"OOD target .*{first.stem}_ood.png disagrees with label"):
        SyntheticFramesDataset(copy)[0]
    assert (SyntheticFramesDataset(copy, verify_ood=False)[0]["ood"] == 1).any()
    ood[:2, :2] = 7
    Image.fromarray(ood).save(ood_path)
    with pytest.raises(DatasetError, match=r"unexpected OOD target values \{7\}"):
        SyntheticFramesDataset(copy)[0]
    # Without the optional *_ood.png, the target is derived from the label alone.
    ood_path.unlink()
    assert (SyntheticFramesDataset(copy)[0]["ood"] == 1).any()
