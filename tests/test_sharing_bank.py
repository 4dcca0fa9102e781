"""Shared outlier banks: export, import into a local bank byte for byte, and drawing from one like BankSource."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from synthrel_lightning.data.io import DatasetError
from synthrel_lightning.sharing import HubBankSource, check_shared_folder, export_bank, import_bank, push_to_hub
from synthrel_lightning.synthesis import BankSource, OutlierBank, OutlierEntry, OutlierMixer
from synthrel_lightning.synthesis.bank import encode_entry


def _entries() -> dict[str, OutlierEntry]:
    rng = np.random.default_rng(7)
    out = {}
    for i in range(6):
        h, w = 9 + i, 14 - i
        out[f"obj{i}"] = OutlierEntry(
            rgb=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            alpha=rng.integers(0, 256, (h, w), dtype=np.uint8),
            label_value=254 if i % 3 else 11,  # two in-distribution controls (person)
            name=f"object {i}",
            prompt=f"a photo of object {i}",
            source=f"frame_{i}",
            seed=None if i == 2 else 1000 + i,
            model="tiny-sd",
            created=1_700_000_000.123456 + i,
            metadata={"slot": i, "box": [1, 2, 3, 4], "nested": {"ok": True, "none": None}},
        )
    frame_rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    out["frame0"] = OutlierEntry(
        rgb=frame_rgb,
        alpha=(rng.random((16, 24)) > 0.7).astype(np.uint8) * 255,
        label=rng.integers(0, 19, (16, 24), dtype=np.uint8),
        kind="frame",
        name="whole frame",
        metadata={},
    )
    return out


@pytest.fixture()
def bank(tmp_path: Path) -> OutlierBank:
    bank = OutlierBank(tmp_path / "bank", num_shards=4)
    for key, entry in _entries().items():
        bank.add(entry, key=key)
    return bank


def test_bank_round_trip_is_byte_exact(bank: OutlierBank, tmp_path: Path) -> None:
    manifest = export_bank(bank, tmp_path / "shared", max_shard_entries=3, row_group_entries=2)
    assert manifest["kind"] == "bank" and manifest["splits"]["train"]["num_rows"] == 7
    assert manifest["counts"]["train"] == {
        "entries": 7,
        "kind_object": 6,
        "kind_frame": 1,
        "ood_entries": 5,
        "control_entries": 2,
    }
    shards = sorted((tmp_path / "shared" / "data").iterdir())
    assert [pq.ParquetFile(p).metadata.num_rows for p in shards] == [3, 3, 1]
    report = import_bank(tmp_path / "shared", tmp_path / "copy")
    assert report == {"bank": str(tmp_path / "copy"), "added": 7, "kept": 0, "entries": 7}
    copy = OutlierBank(tmp_path / "copy", mode="r")
    assert copy.keys() == bank.keys()
    for key in bank.keys():
        a, b = bank.get(key), copy.get(key)
        # The entry encoding covers every array, its dtype and shape, and every field (sorted JSON).
        assert encode_entry(b, compress=False) == encode_entry(a, compress=False), key
        assert b.rgb.dtype == np.uint8 and b.alpha.dtype == np.uint8
    assert copy.get("frame0").label is not None and copy.get("obj0").label is None
    assert copy.get("obj2").seed is None and copy.get("obj1").metadata["nested"] == {"ok": True, "none": None}
    again = import_bank(tmp_path / "shared", copy.root)
    assert (again["added"], again["kept"]) == (0, 7)


def test_hub_bank_source_draws_what_bank_source_draws(bank: OutlierBank, tmp_path: Path) -> None:
    export_bank(bank.root, tmp_path / "shared", max_shard_entries=4, row_group_entries=1)
    local, shared = BankSource(bank.root), HubBankSource(tmp_path / "shared")
    assert shared.keys() == bank.keys() and len(shared) == 7
    for seed in range(20):
        a, b = local.sample(np.random.default_rng(seed)), shared.sample(np.random.default_rng(seed))
        assert a is not None and b is not None and a.kind == b.kind == "object"
        assert encode_entry(a, compress=False) == encode_entry(b, compress=False)
    local_frames = BankSource(bank.root, kinds=("frame",))
    shared_frames = HubBankSource(tmp_path / "shared", kinds=("frame",))
    drawn = [
        (local_frames.sample(np.random.default_rng(s)), shared_frames.sample(np.random.default_rng(s)))
        for s in range(10)
    ]
    assert [a is None for a, _ in drawn] == [b is None for _, b in drawn]
    assert any(b is not None and b.kind == "frame" and b.name == "whole frame" for _, b in drawn)
    revived = pickle.loads(pickle.dumps(shared))  # as DataLoader workers receive it
    assert encode_entry(revived.sample(np.random.default_rng(5))) == encode_entry(
        local.sample(np.random.default_rng(5))
    )


def test_mixer_over_a_shared_bank_mixes_like_over_the_bank(bank: OutlierBank, tmp_path: Path) -> None:
    export_bank(bank, tmp_path / "shared")
    rng = np.random.default_rng(0)
    sample = {
        "image": rng.integers(0, 256, (64, 96, 3), dtype=np.uint8),
        "label": rng.integers(0, 19, (64, 96), dtype=np.uint8),
        "ood": np.zeros((64, 96), np.uint8),
        "name": "frame",
    }
    local = OutlierMixer(BankSource(bank.root), probability=1.0, num_objects=(2, 3), seed=4)
    shared = OutlierMixer(HubBankSource(tmp_path / "shared"), probability=1.0, num_objects=(2, 3), seed=4)
    for index in range(4):
        a, b = local(dict(sample), index=index), shared(dict(sample), index=index)
        for key in ("image", "label", "ood"):
            assert np.array_equal(a[key], b[key]), key
    assert (shared(dict(sample), index=0)["label"] == 254).any()


def test_bank_export_refusals(bank: OutlierBank, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inside the source folder"):
        export_bank(bank, bank.root / "shared")
    with pytest.raises(FileNotFoundError, match="not an outlier bank"):
        export_bank(tmp_path, tmp_path / "x")
    OutlierBank(tmp_path / "empty")
    with pytest.raises(ValueError, match="holds no entries"):
        export_bank(tmp_path / "empty", tmp_path / "y")
    assert not (tmp_path / "y").exists()
    export_bank(bank, tmp_path / "shared")
    with pytest.raises(FileExistsError, match="not empty"):
        export_bank(bank, tmp_path / "shared")


def test_a_frame_set_opened_as_a_bank_names_the_missing_columns(tmp_path: Path) -> None:
    from synthrel_lightning.data import CityscapesDataset, write_demo_cityscapes
    from synthrel_lightning.sharing import export_frames

    root = write_demo_cityscapes(tmp_path / "demo", num_train=0, num_val=1, size=(32, 48))
    export_frames(CityscapesDataset(root, split="val"), tmp_path / "frames", split="train")
    with pytest.raises(DatasetError, match=r"lacks the columns \['key', 'rgb', 'alpha', 'label_value'\]"):
        HubBankSource(tmp_path / "frames")


def test_push_checks_the_folder_before_any_upload(bank: OutlierBank, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a shared set"):
        push_to_hub(bank.root, "me/outliers")
    export_bank(bank, tmp_path / "shared", max_shard_entries=4)
    assert check_shared_folder(tmp_path / "shared") == tmp_path / "shared"
    with pytest.raises(ValueError, match="is not a Hub id"):
        push_to_hub(tmp_path / "shared", "not a repo id")
    (tmp_path / "shared" / "data" / "train-00001-of-00002.parquet").unlink()
    with pytest.raises(DatasetError, match="missing"):
        push_to_hub(tmp_path / "shared", "me/outliers")
