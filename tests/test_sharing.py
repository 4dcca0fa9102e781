"""Shared frame sets: export to Parquet shards + card, load back by path, bit-exact round trips, QC tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthrel_lightning.data import CityscapesDataset, KeyedDataset, RoadAnomalyDataset, write_demo_cityscapes
from synthrel_lightning.data.io import DatasetError
from synthrel_lightning.sharing import HubFramesDataset, export_frames
from synthrel_lightning.synthesis import OutlierMixer, ProceduralObjectSource


def _assert_same_frames(original, shared, raw=lambda ds, i: ds.load_raw(i)) -> None:
    assert len(shared) == len(original)
    for i in range(len(original)):
        a, b = raw(original, i), shared.load_raw(i)
        assert a["name"] == b["name"]
        for key in ("image", "label", "ood"):
            assert b[key].dtype == np.uint8 and b[key].shape == a[key].shape, key
            assert np.array_equal(a[key], b[key]), f"{a['name']} {key} differs"


@pytest.fixture(scope="module")
def road_anomaly_share(tmp_path_factory, road_anomaly_root: Path):
    original = RoadAnomalyDataset(road_anomaly_root, max_samples=5)
    out = tmp_path_factory.mktemp("share") / "road_anomaly"
    manifest = export_frames(original, out, max_shard_frames=2, row_group_frames=1, license="cc-by-sa-4.0")
    return original, out, manifest


def test_road_anomaly_round_trip_is_bit_exact(road_anomaly_share, road_anomaly_root: Path) -> None:
    from PIL import Image

    original, out, manifest = road_anomaly_share
    shared = HubFramesDataset(out, split="test")
    _assert_same_frames(original, shared)
    # The reference pixels come from the files themselves, not from our loader.
    first = json.loads((road_anomaly_root / "frame_list.json").read_text())[0]
    stem = first.rsplit(".", 1)[0]
    image = np.asarray(Image.open(road_anomaly_root / "frames" / first).convert("RGB"))
    raw = np.asarray(Image.open(road_anomaly_root / "frames" / f"{stem}.labels" / "labels_semantic.png"))
    sample = shared[0]
    assert sample["name"] == stem
    assert np.array_equal(sample["image"], image)
    assert np.array_equal(sample["ood"], (raw >= 2).astype(np.uint8))
    assert shared.has_semantics is False and shared.has_ood is True
    assert shared.metadata(0) == {
        "height": 720,
        "width": 1280,
        "files": {"image": f"frames/{first}", "label": f"frames/{stem}.labels/labels_semantic.png"},
    }
    assert shared.qc_columns == [] and shared.qc(0) == {}


def test_shards_are_bounded_and_the_manifest_counts_the_frames(road_anomaly_share) -> None:
    original, out, manifest = road_anomaly_share
    files = sorted(p.name for p in (out / "data").iterdir())
    assert files == [f"test-0000{i}-of-00003.parquet" for i in range(3)]
    rows = [pq.ParquetFile(out / "data" / f).metadata for f in files]
    assert [m.num_rows for m in rows] == [2, 2, 1]
    assert all(m.row_group(g).num_rows == 1 for m in rows for g in range(m.num_row_groups))
    counts = manifest["counts"]["test"]
    oods = [original.load_raw(i)["ood"] for i in range(len(original))]
    assert counts["frames"] == 5
    assert counts["ood_pixels"] == sum(int((o == 1).sum()) for o in oods)
    assert counts["frames_with_ood"] == sum(int((o == 1).any()) for o in oods)
    assert counts["min_size"] == counts["max_size"] == [720, 1280]
    on_disk = json.loads((out / "synthrel_share.json").read_text())
    assert on_disk["splits"]["test"]["num_rows"] == 5 and on_disk["kind"] == "frames"
    assert on_disk["provenance"]["sets"]["test"]["dataset"].endswith("RoadAnomalyDataset")
    assert not list(out.parent.glob(".road_anomaly.*")), "the staging folder must be gone"


def test_datasets_load_dataset_reads_the_folder_through_its_card(road_anomaly_share, tmp_path: Path) -> None:
    import datasets

    original, out, _ = road_anomaly_share
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "license: cc-by-sa-4.0" in card and "RoadAnomalyDataset" in card
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert list(loaded) == ["test"]
    test = loaded["test"]
    assert test.num_rows == 5
    assert isinstance(test.features["image"], datasets.Image) and isinstance(test.features["ood"], datasets.Image)
    row = test[4]
    sample = original.load_raw(4)
    assert row["name"] == sample["name"]
    assert np.array_equal(np.asarray(row["image"]), sample["image"])
    assert np.array_equal(np.asarray(row["ood"]), sample["ood"])
    assert np.array_equal(np.asarray(row["label"]), sample["label"])


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return write_demo_cityscapes(tmp_path_factory.mktemp("demo") / "cityscapes", num_train=0, num_val=4, size=(48, 80))


def test_demo_domain_set_and_procedural_objects_share_in_one_set(demo_root: Path, tmp_path: Path) -> None:
    val = CityscapesDataset(demo_root, split="val")
    mixer = OutlierMixer(ProceduralObjectSource(size_range=(8, 24)), probability=1.0, num_objects=(1, 2), seed=3)
    objects = KeyedDataset(val, mixer=mixer, fixed_epoch=0)
    before = sorted(p.relative_to(demo_root) for p in demo_root.rglob("*"))
    manifest = export_frames({"validation": val, "objects": objects}, tmp_path / "demo_share", max_shard_frames=3)
    assert sorted(p.relative_to(demo_root) for p in demo_root.rglob("*")) == before, "the set folder was written to"
    assert set(manifest["splits"]) == {"validation", "objects"}
    assert manifest["provenance"]["sets"]["validation"]["demo_scenes"]["seed"] == 0
    assert manifest["provenance"]["sets"]["objects"]["mixer_seed"] == 3

    shared_val = HubFramesDataset(tmp_path / "demo_share", split="validation")
    _assert_same_frames(val, shared_val)
    assert shared_val.has_semantics is True and shared_val.has_ood is False
    shared_obj = HubFramesDataset(tmp_path / "demo_share", split="objects")
    _assert_same_frames(objects, shared_obj, raw=lambda ds, i: ds[i])
    assert shared_obj.has_ood is True
    assert all((shared_obj[i]["label"] == 254).any() for i in range(len(shared_obj)))
    assert manifest["counts"]["objects"]["frames_with_ood"] == 4


def test_a_shared_set_is_an_evaluation_set_of_a_datamodule_from_yaml(demo_root: Path, tmp_path: Path) -> None:
    import lightning as L
    import torch
    import yaml
    from jsonargparse import ArgumentParser

    from synthrel_lightning.commands._parsing import instantiate

    out = tmp_path / "val_share"
    export_frames(CityscapesDataset(demo_root, split="val"), out, split="validation")
    config = {
        "data": {
            "class_path": "synthrel_lightning.data.DemoDataModule",
            "init_args": {
                "root": str(demo_root),
                "num_train": 0,
                "num_val": 4,
                "image_size": [48, 80],
                "eval_batch_size": 2,
                "val_outliers": False,
                "extra_val_sets": {
                    "shared": {
                        "class_path": "synthrel_lightning.sharing.HubFramesDataset",
                        "init_args": {"source": str(out), "split": "validation"},
                    }
                },
            },
        }
    }
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    cfg = parser.parse_string(yaml.safe_dump(config))
    dm = instantiate(parser, cfg).data
    dm.setup("validate")
    assert dm.val_set_names == ["demo", "shared"]
    demo_loader, shared_loader = dm.val_dataloader()
    for a, b in zip(demo_loader, shared_loader):
        assert a["name"] == b["name"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert torch.equal(a["ood"], b["ood"])


def _write_synthetic_set(root: Path, count: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(count):
        image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        label = rng.integers(0, 19, (20, 30), dtype=np.uint8)
        label[5:9, 10:16] = 254
        label[0, :] = 255
        Image.fromarray(image).save(root / "images" / f"f{i}.png")
        Image.fromarray(label).save(root / "labels" / f"f{i}_labelTrainIds.png")


def test_qc_table_beside_the_set_is_copied_and_joined_by_frame_name(tmp_path: Path) -> None:
    from synthrel_lightning.data import SyntheticFramesDataset

    root = tmp_path / "sets" / "fog-ood"
    _write_synthetic_set(root)
    qc_dir = tmp_path / "sets" / "fog-ood.qc"
    qc_dir.mkdir()
    csv_text = "frame,ood_px,segformer.n_px,segformer.miou,object.status\nf0,24,536,0.5,checked\nf2,24,536,,checked\n"
    (qc_dir / "frames.csv").write_text(csv_text)
    (qc_dir / "summary.json").write_text('{"frames": 2}\n')
    dataset = SyntheticFramesDataset(root)
    manifest = export_frames(dataset, tmp_path / "out", split="test")
    out = tmp_path / "out"
    assert (out / "qc" / "frames.csv").read_bytes() == csv_text.encode()
    assert (out / "qc" / "summary.json").read_text() == '{"frames": 2}\n'
    assert manifest["qc"]["rows"] == 2 and manifest["qc"]["matched"] == 2 and manifest["qc"]["key"] == "frame"
    shared = HubFramesDataset(out)
    _assert_same_frames(dataset, shared)
    assert shared.qc_columns == ["ood_px", "segformer.n_px", "segformer.miou", "object.status"]
    assert shared.qc(0) == {"ood_px": 24, "segformer.n_px": 536, "segformer.miou": 0.5, "object.status": "checked"}
    assert shared.qc(1) == dict.fromkeys(shared.qc_columns)  # no row for f1
    assert shared.qc(2)["segformer.miou"] is None and shared.qc(2)["ood_px"] == 24
    assert "Quality control" in (out / "README.md").read_text()


def test_qc_table_given_as_parquet_and_a_table_without_frame_names(tmp_path: Path) -> None:
    from synthrel_lightning.data import SyntheticFramesDataset

    root = tmp_path / "set"
    _write_synthetic_set(root, count=2)
    table = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"name": ["f1", "f0"], "score": [0.25, 0.75]}), table)
    export_frames(SyntheticFramesDataset(root), tmp_path / "out", qc_table=table)
    shared = HubFramesDataset(tmp_path / "out")
    assert [shared.qc(i) for i in range(2)] == [{"score": 0.75}, {"score": 0.25}]
    assert (tmp_path / "out" / "qc" / "scores.parquet").read_bytes() == table.read_bytes()
    pq.write_table(pa.table({"id": ["f0"], "score": [1.0]}), table)
    with pytest.raises(ValueError, match=r"no frame-name column \['frame', 'name'\].*'id', 'score'"):
        export_frames(SyntheticFramesDataset(root), tmp_path / "out2", qc_table=table)
    assert not (tmp_path / "out2").exists()


class _Flaky(CityscapesDataset):
    """A Cityscapes-layout set whose frames from ``fail_from`` on fail to load (a crash mid-export)."""

    fail_from: int | None = None
    loads = 0

    def _load(self, frame):
        _Flaky.loads += 1
        if self.fail_from is not None and self.frames.index(frame) >= self.fail_from:
            raise DatasetError(f"simulated failure at {frame.name}")
        return super()._load(frame)


def test_an_interrupted_export_leaves_no_output_and_resumes(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume"
    flaky = _Flaky(demo_root, split="val")
    flaky.fail_from = 2
    with pytest.raises(DatasetError, match="simulated failure"):
        export_frames(flaky, out, max_shard_frames=2, row_group_frames=1)
    assert not out.exists()
    assert (tmp_path / ".resume.partial" / "data" / "test-00000.parquet").is_file()
    _Flaky.loads = 0
    good = _Flaky(demo_root, split="val")
    export_frames(good, out, max_shard_frames=2, row_group_frames=1)
    assert _Flaky.loads == 2, "the first shard (frames 0-1) must not be read again"
    _assert_same_frames(good, HubFramesDataset(out))
    assert not (tmp_path / ".resume.partial").exists()


def test_output_rules_overwrite_and_never_inside_the_set(demo_root: Path, tmp_path: Path) -> None:
    val = CityscapesDataset(demo_root, split="val", max_samples=1)
    with pytest.raises(ValueError, match="inside the source folder"):
        export_frames(val, demo_root / "shared")
    assert not (demo_root / "shared").exists()
    with pytest.raises(ValueError, match="holds the source folder"):
        export_frames(val, demo_root.parent, overwrite=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_frames(val, out)
    assert (out / "keep.txt").read_text() == "user file"
    export_frames(val, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "README.md").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    export_frames(val, empty)
    assert len(HubFramesDataset(empty)) == 1


def test_bad_inputs_get_clear_errors(demo_root: Path, tmp_path: Path) -> None:
    from synthrel_lightning.data import eval_transform

    with pytest.raises(DatasetError, match="without its transform"):
        export_frames(KeyedDataset(CityscapesDataset(demo_root, split="val"), eval_transform()), tmp_path / "a")
    val = CityscapesDataset(demo_root, split="val", max_samples=2)
    with pytest.raises(ValueError, match="split name 'my-split'"):
        export_frames(val, tmp_path / "b", split="my-split")
    twice = KeyedDataset(val, mixer=lambda sample, index, epoch: {**sample, "name": "same"})
    with pytest.raises(ValueError, match="frame name 'same' occurs twice"):
        export_frames(twice, tmp_path / "c")
    assert not (tmp_path / "c").exists()

    with pytest.raises(DatasetError, match="neither a folder with Parquet shards nor a Hugging Face Hub dataset id"):
        HubFramesDataset(tmp_path / "does" / "not" / "exist")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="holds no shared set"):
        HubFramesDataset(tmp_path / "plain")
    with pytest.raises(DatasetError, match="cannot fetch Hub dataset 'nobody-here/no-such-set'"):
        HubFramesDataset("nobody-here/no-such-set")  # offline in tests: the Hub is never reached

    export_frames(val, tmp_path / "ok", split="validation")
    with pytest.raises(DatasetError, match=r"no split 'test'; its splits: \['validation'\]"):
        HubFramesDataset(tmp_path / "ok", split="test")
    partial = tmp_path / "partial" / "data"
    partial.mkdir(parents=True)
    pq.write_table(pa.table({"name": ["x"], "image": [b"png"]}), partial / "test-00000-of-00001.parquet")
    with pytest.raises(DatasetError, match=r"lacks the columns \['label', 'ood'\]"):
        HubFramesDataset(tmp_path / "partial")


def test_a_corrupt_cell_is_reported_or_skipped(demo_root: Path, tmp_path: Path) -> None:
    val = CityscapesDataset(demo_root, split="val", max_samples=2)
    export_frames(val, tmp_path / "ok")
    shard = tmp_path / "ok" / "data" / "test-00000-of-00001.parquet"
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    images[1] = {"bytes": images[1]["bytes"][:40], "path": None}
    image_type = table.schema.field("image").type
    table = table.set_column(1, table.schema.field("image"), pa.array(images, type=image_type))
    pq.write_table(table, shard)
    with pytest.raises(DatasetError, match="frame 'valburg_000001_000019' image: cannot decode"):
        HubFramesDataset(tmp_path / "ok")[1]
    skipping = HubFramesDataset(tmp_path / "ok", on_error="skip")
    assert len(skipping) == 1 and skipping.num_skipped == 1


def test_real_cityscapes_frame_matches_the_official_train_id_file(cityscapes_mini: Path, tmp_path: Path) -> None:
    """Independent of our readers: the shared label equals the official ``labelTrainIds`` file, pixel for pixel."""
    from PIL import Image

    val = CityscapesDataset(cityscapes_mini, split="val")
    export_frames(val, tmp_path / "out", split="validation")
    shared = HubFramesDataset(tmp_path / "out", split="validation")
    stem = "frankfurt_000000_000294"
    gt = cityscapes_mini / "gtFine" / "val" / "frankfurt" / f"{stem}_gtFine_labelTrainIds.png"
    rgb = cityscapes_mini / "leftImg8bit" / "val" / "frankfurt" / f"{stem}_leftImg8bit.png"
    assert shared[0]["name"].startswith(stem)
    assert np.array_equal(shared[0]["label"], np.asarray(Image.open(gt)))
    assert np.array_equal(shared[0]["image"], np.asarray(Image.open(rgb).convert("RGB")))


def test_a_shared_set_serves_its_qc_filtered_view(tmp_path: Path) -> None:
    from synthrel_lightning.data import SyntheticFramesDataset

    root = tmp_path / "sets" / "fog-ood"
    _write_synthetic_set(root)
    qc_dir = tmp_path / "sets" / "fog-ood.qc"
    qc_dir.mkdir()
    (qc_dir / "frames.csv").write_text(
        "frame,ood_px,ref.n_px,ref.miou,ref.pixel_acc\nf0,24,536,0.75,0.9\nf1,24,536,0.25,0.9\nf2,24,536,0.5,0.9\n"
    )
    export_frames(SyntheticFramesDataset(root), tmp_path / "out", split="test")
    shutil.rmtree(qc_dir)  # elsewhere: only the shared copy of the table exists
    view = HubFramesDataset(tmp_path / "out", qc_filter={"min_miou": 0.5})
    assert view.names == ["f0", "f2"] and view.qc_report["kept"] == 2
    assert len(HubFramesDataset(tmp_path / "out")) == 3
