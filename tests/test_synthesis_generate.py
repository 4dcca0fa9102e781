"""`generate`: the Lightning predict loop that fills an outlier bank, end to end on real frames and a tiny saved pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from synthrel_lightning.labels import OOD_ID, TRAIN_NAME_TO_ID
from synthrel_lightning.synthesis.bank import OutlierBank
from synthrel_lightning.synthesis.generate import WorkItemDataset, main
from synthrel_lightning.synthesis.placement import PlacementSampler
from synthrel_lightning.synthesis.tiny import save_tiny_pipeline
from synthrel_lightning.synthesis.vocabulary import resolve_vocabulary

STEM = "frankfurt_000000_000294"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd-inpaint-tiny")


@pytest.fixture(scope="module")
def two_frames(cityscapes_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Cityscapes root with the real frame and its mirror image (a second real frame)."""
    root = tmp_path_factory.mktemp("cs")
    for sub, suffix in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
        src = cityscapes_mini / sub / "val/frankfurt" / f"{STEM}_{suffix}.png"
        dst = root / sub / "val/frankfurt"
        dst.mkdir(parents=True)
        shutil.copy(src, dst / f"{STEM}_{suffix}.png")
        Image.fromarray(np.asarray(Image.open(src))[:, ::-1].copy()).save(dst / f"frankfurt_000000_000295_{suffix}.png")
    return root


def write_config(path: Path, bank: Path, frames: Path, tiny: Path, **extra) -> Path:
    cfg = {
        "bank": str(bank),
        "source": {
            "class_path": "synthrel_lightning.data.cityscapes.CityscapesDataset",
            "init_args": {"root": str(frames), "split": "val"},
        },
        "engine": {
            "model_id": str(tiny),
            "device": "cpu",
            "dtype": "float32",
            "num_inference_steps": 2,
            "resolution": 64,
            "mask_method": "changed",
        },
        "vocabulary": ["elephant", "lion", "arcade machine"],
        "controls": ["car"],
        "objects_per_frame": 2,
        "seed": 3,
        "batch_size": 2,
        "accelerator": "cpu",
        "devices": 1,
        "progress": False,
    }
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def bank_content(root: Path) -> dict[str, np.ndarray]:
    bank = OutlierBank(root, mode="r")
    return {k: e.rgb for k, e in bank.iter_entries()}


def test_generate_end_to_end_with_eval_frames(tmp_path: Path, two_frames: Path, tiny_folder: Path, capsys) -> None:
    bank_root, eval_dir = tmp_path / "bank", tmp_path / "eval"
    cfg = write_config(tmp_path / "gen.yaml", bank_root, two_frames, tiny_folder, write="both", eval_dir=str(eval_dir))
    main(["--config", str(cfg)])
    assert '"written": 4' in capsys.readouterr().out
    bank = OutlierBank(bank_root, mode="r")
    entries = dict(bank.iter_entries())
    objects = [e for e in entries.values() if e.kind == "object"]
    frames = [e for e in entries.values() if e.kind == "frame"]
    assert len(objects) == 4 and len(frames) == 4
    for e in objects:
        assert e.label_value in (OOD_ID, TRAIN_NAME_TO_ID["car"]) and e.model == str(tiny_folder)
        assert e.rgb.shape[:2] == e.alpha.shape and e.alpha.max() > 0
        assert e.prompt.startswith("A photo of a")
    for e in frames:
        assert e.rgb.shape == (128, 256, 3) and e.label.shape == (128, 256)
        assert (e.label == e.label_value).sum() >= (e.alpha > 0).sum() > 0
    images = sorted((eval_dir / "images").glob("*.png"))
    assert len(images) == 4
    ood = np.asarray(Image.open(eval_dir / "labels" / f"{images[0].stem}_ood.png"))
    lbl = np.asarray(Image.open(eval_dir / "labels" / f"{images[0].stem}_labelTrainIds.png"))
    assert set(np.unique(ood)) <= {0, 1, 255} and ((lbl == OOD_ID) == (ood == 1)).all()


def test_interrupted_run_resumes_and_output_is_deterministic(
    tmp_path: Path, two_frames: Path, tiny_folder: Path, capsys
) -> None:
    bank_a = tmp_path / "a"
    cfg = write_config(tmp_path / "a.yaml", bank_a, two_frames, tiny_folder)
    # An interrupted run: only the first batch (2 of 4 items) gets done.
    main(["--config", str(cfg), "--limit_predict_batches", "1"])
    first = {p: p.stat().st_mtime_ns for p in bank_a.glob("*/*.npz")}
    assert len(first) == 2
    capsys.readouterr()
    main(["--config", str(cfg)])
    out = capsys.readouterr().out
    assert '"pending_at_start": 2' in out and '"written": 2' in out
    assert {p: p.stat().st_mtime_ns for p in first} == first  # finished items were not redone
    main(["--config", str(cfg)])
    assert '"pending_at_start": 0' in capsys.readouterr().out
    # A second bank from the same configuration in one go holds the same entries.
    bank_b = tmp_path / "b"
    main(["--config", str(write_config(tmp_path / "b.yaml", bank_b, two_frames, tiny_folder))])
    a, b = bank_content(bank_a), bank_content(bank_b)
    assert sorted(a) == sorted(b) and len(a) == 4
    for k in a:
        assert np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1  # batch composition: float rounding only
    # Another seed gives other objects/boxes.
    bank_c = tmp_path / "c"
    main(["--config", str(write_config(tmp_path / "c.yaml", bank_c, two_frames, tiny_folder, seed=4))])
    assert not set(bank_content(bank_c)) & set(a)


def test_work_items_are_keyed_by_item_not_by_rank(two_frames: Path) -> None:
    from torch.utils.data import DistributedSampler

    from synthrel_lightning.data.cityscapes import CityscapesDataset

    src = CityscapesDataset(two_frames, split="val")
    vocab = resolve_vocabulary(["elephant", "lion", "sofa", "zebra"])
    ds = WorkItemDataset(src, vocab, PlacementSampler(), seed=0, objects_per_frame=3)
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 6 and len({it["key"] for it in items}) == 6 and len({it["seed"] for it in items}) == 6
    assert len({it["box"] for it in items}) > 1
    again = WorkItemDataset(src, vocab, PlacementSampler(), seed=0, objects_per_frame=3)
    assert [(it["key"], it["box"], it["object"], it["seed"]) for it in items] == [
        (it["key"], it["box"], it["object"], it["seed"]) for it in (again[i] for i in range(len(again)))
    ]
    # Ranks get disjoint shards that together cover every item.
    shards = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(6))
    # Items already done are left out.
    done = {items[0]["key"], items[4]["key"]}
    rest = WorkItemDataset(src, vocab, PlacementSampler(), seed=0, objects_per_frame=3, done=done)
    assert len(rest) == 4 and rest.total == 6 and done.isdisjoint(rest[i]["key"] for i in range(4))


def test_inpainted_object_source_feeds_the_bank_producer(tmp_path: Path, two_frames: Path, tiny_folder: Path) -> None:
    from synthrel_lightning.synthesis.sources import ProducerSpec, produce_into_bank

    spec = ProducerSpec(
        "synthrel_lightning.synthesis.generate.InpaintedObjectSource",
        {
            "source": str(two_frames),
            "split": "val",
            "vocabulary": ["lion"],
            "engine": {"model_id": str(tiny_folder), "dtype": "float32", "num_inference_steps": 2, "resolution": 64},
        },
    )
    status = produce_into_bank(spec, tmp_path / "bank", n=2, seed=0, namespace="refresh", device="cpu")
    assert status["produced"] == 2 and status["fatal"] is None, status
    entries = [e for _, e in OutlierBank(tmp_path / "bank", mode="r").iter_entries()]
    assert all(e.name == "lion" and e.label_value == OOD_ID and e.prompt == "A photo of a lion" for e in entries)
