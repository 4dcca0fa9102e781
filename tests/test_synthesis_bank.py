"""OutlierBank: round trips, atomic commits, killed and concurrent writers, corruption, full disk."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from synthrel_lightning.synthesis.bank import (
    BankWriteError,
    CorruptEntryError,
    OutlierBank,
    OutlierEntry,
    decode_entry,
    encode_entry,
)


def _entry(i: int, size: int = 24, label_value: int = 254) -> OutlierEntry:
    rng = np.random.default_rng(i)
    return OutlierEntry(
        rgb=rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8),
        alpha=rng.random((size, size + 3)).astype(np.float32),
        label_value=label_value,
        name=f"object {i}",
        prompt=f"A photo of an object {i}",
        source=f"frame_{i}",
        seed=i,
        model="test-model",
        metadata={"slot": i, "box": [1, 2, 3, 4]},
    )


def test_round_trip_and_listing(tmp_path: Path) -> None:
    bank = OutlierBank(tmp_path / "bank")
    e = _entry(3)
    key = bank.add(e)
    got = bank.get(key)
    np.testing.assert_array_equal(got.rgb, e.rgb)
    np.testing.assert_array_equal(got.alpha, e.alpha)
    assert got.alpha.dtype == np.uint8 and got.alpha_float().max() <= 1.0
    assert (got.name, got.prompt, got.source, got.seed, got.model, got.label_value) == (
        "object 3",
        "A photo of an object 3",
        "frame_3",
        3,
        "test-model",
        254,
    )
    assert got.metadata == {"slot": 3, "box": [1, 2, 3, 4]}
    assert got.created == pytest.approx(e.created)
    assert key in bank and "missing" not in bank and len(bank) == 1
    with pytest.raises(KeyError, match="missing"):
        bank.get("missing")
    # Another handle (another process) sees new entries after refresh().
    reader = OutlierBank(tmp_path / "bank", mode="r")
    assert len(reader) == 1
    bank.add(_entry(4, label_value=13), key="control")
    assert len(reader) == 1 and reader.refresh() == 2
    assert reader.get("control").label_value == 13 and not reader.get("control").is_ood
    assert reader.sample(np.random.default_rng(0)).name in {"object 3", "object 4"}
    with pytest.raises(PermissionError, match="read-only"):
        reader.add(_entry(5))


def test_deterministic_keys_skip_done_work(tmp_path: Path) -> None:
    bank = OutlierBank(tmp_path)
    key = OutlierBank.make_key(0, "frankfurt_000000_000294", "zebra", 2)
    assert key == OutlierBank.make_key(0, "frankfurt_000000_000294", "zebra", 2)
    assert key != OutlierBank.make_key(0, "frankfurt_000000_000294", "zebra", 3)
    bank.add(_entry(1), key=key)
    mtime = bank.path(key).stat().st_mtime_ns
    time.sleep(0.01)
    assert bank.add(_entry(2), key=key) == key
    assert bank.path(key).stat().st_mtime_ns == mtime and bank.get(key).name == "object 1"
    bank.add(_entry(2), key=key, overwrite=True)
    assert bank.get(key).name == "object 2"


def test_entry_validation() -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="alpha"):
        OutlierEntry(rgb=rgb, alpha=np.zeros((5, 4)))
    with pytest.raises(ValueError, match="label_value"):
        OutlierEntry(rgb=rgb, alpha=np.zeros((4, 5)), label_value=42)
    with pytest.raises(ValueError, match="uint8"):
        OutlierEntry(rgb=rgb.astype(np.float32), alpha=np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        OutlierEntry(rgb=rgb, alpha=np.full((4, 5), 3.0))
    assert OutlierEntry(rgb=rgb, alpha=np.ones((4, 5), bool)).alpha.max() == 255


def test_corrupt_entries_are_named_or_skipped(tmp_path: Path) -> None:
    bank = OutlierBank(tmp_path, compress=False)
    keys = [bank.add(_entry(i), key=f"k{i}") for i in range(4)]
    # Truncated file (e.g. copied while incomplete).
    p0 = bank.path(keys[0])
    p0.write_bytes(p0.read_bytes()[:100])
    with pytest.raises(CorruptEntryError, match=str(p0)):
        bank.get(keys[0])
    # A well-formed entry whose pixels no longer match the stored checksum (last byte: alpha's).
    p1 = bank.path(keys[1])
    data = bytearray(p1.read_bytes())
    data[-1] ^= 1
    p1.write_bytes(bytes(data))
    with pytest.raises(CorruptEntryError, match="checksum"):
        bank.get(keys[1])
    assert sorted(bank.verify()) == sorted(keys[:2])
    # Reading for training skips and counts.
    good = [bank.sample(np.random.default_rng(s), keys=keys) for s in range(20)]
    assert all(e is not None and e.name in {"object 2", "object 3"} for e in good)
    assert bank.corrupt_skipped > 0
    assert [k for k, _ in bank.iter_entries(skip_corrupt=True)] == keys[2:]
    with pytest.raises(CorruptEntryError):
        list(bank.iter_entries())


@pytest.mark.parametrize("compress", [True, False])
def test_entry_formats_round_trip_and_old_banks_still_read(tmp_path: Path, compress: bool) -> None:
    """Format 2 (raw entry) and format 1 (``.npz``, banks written before) decode to the same entry."""
    e = _entry(7)
    e.label = np.arange(e.rgb.shape[0] * e.rgb.shape[1], dtype=np.int64).reshape(e.rgb.shape[:2]).astype(np.uint8)
    for version in (1, 2):
        got = decode_entry(encode_entry(e, compress=compress, version=version))
        for name in ("rgb", "alpha", "label"):
            np.testing.assert_array_equal(getattr(got, name), getattr(e, name))
        assert got._meta() == e._meta()
    # An old bank: format 1 marker and ``.npz`` entries, as the previous release wrote them.
    root = tmp_path / "old"
    bank = OutlierBank(root, compress=compress)
    (root / "bank.json").write_text(json.dumps({"format": "synthrel-outlier-bank", "version": 1, "num_shards": 256}))
    legacy = bank.path("old").with_suffix(".npz")
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_bytes(encode_entry(e, compress=compress, version=1))
    with np.load(legacy) as z:  # really a NumPy archive
        assert set(z.files) == {"rgb", "alpha", "label", "meta", "checksum"}
    reader = OutlierBank(root, mode="r")
    assert reader.keys() == ["old"] and "old" in reader and reader.path("old") == legacy
    np.testing.assert_array_equal(reader.get("old").rgb, e.rgb)
    assert reader.get("old").rgb.flags.writeable and bank.get("old").name == "object 7"
    assert bank.add(_entry(8), key="old") == "old" and bank.get("old").name == "object 7"  # done work is kept
    # New entries in the old bank use format 2; overwriting replaces the old file.
    bank.add(_entry(9), key="new")
    assert bank.path("new").suffix == ".entry" and bank.path("new").read_bytes()[:1] == b"\x93"
    bank.add(_entry(10), key="old", overwrite=True)
    assert not legacy.exists() and bank.path("old").suffix == ".entry" and bank.get("old").name == "object 10"
    assert OutlierBank(root, mode="r").keys() == ["new", "old"]
    assert bank.get("new").rgb.flags.writeable  # entries read from disk may be modified, as before


def test_truncated_or_garbled_format_2_entries_are_named(tmp_path: Path) -> None:
    bank = OutlierBank(tmp_path, compress=True)
    key = bank.add(_entry(1))
    path = bank.path(key)
    data = path.read_bytes()
    for bad in (data[:5], data[:20], data[:-3], data + b"xx", data[:12] + b"#" + data[13:]):
        path.write_bytes(bad)
        with pytest.raises(CorruptEntryError, match=f"{path}.*unreadable"):
            bank.get(key)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "bank.json").write_text(json.dumps({"format": "synthrel-outlier-bank", "version": 99}))
    with pytest.raises(ValueError, match="version 99 is newer"):
        OutlierBank(newer, mode="r")


class _FullDiskBank(OutlierBank):
    """A bank whose storage runs out of space half-way through every entry."""

    def _write_bytes(self, path: Path, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_leaves_no_entry_and_says_so(tmp_path: Path) -> None:
    OutlierBank(tmp_path)  # create the marker with a working disk
    bank = _FullDiskBank(tmp_path)
    with pytest.raises(BankWriteError, match="disk is full") as info:
        bank.add(_entry(0), key="k0")
    assert str(tmp_path) in str(info.value) and info.value.errno == errno.ENOSPC
    assert "k0" not in bank and bank.refresh() == 0
    assert bank.temp_files() == []


class _SlowBank(OutlierBank):
    """Writes each entry in small chunks, so a kill lands in the middle of a write."""

    def _write_bytes(self, path: Path, data: bytes) -> None:
        with open(path, "wb") as f:
            for i in range(0, len(data), 4096):
                f.write(data[i : i + 4096])
                f.flush()
                time.sleep(0.01)


def _slow_writer(root: str) -> None:
    bank = _SlowBank(root, compress=False, fsync=False)
    i = 0
    while True:
        bank.add(_entry(i, size=64), key=f"w{i}")
        i += 1


def _writer(root: str, start: int, stop: int) -> None:
    bank = OutlierBank(root)
    for i in range(start, stop):
        bank.add(_entry(i), key=OutlierBank.make_key("job", i))


def test_killed_writer_leaves_only_complete_entries(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_slow_writer, args=(str(tmp_path),))
    proc.start()
    bank = OutlierBank(tmp_path)
    deadline = time.monotonic() + 60
    # Kill once at least two entries are committed and a third is half written.
    while time.monotonic() < deadline and not (bank.refresh() >= 2 and bank.temp_files()):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    temps = bank.temp_files()
    assert temps, "the writer was expected to die in the middle of a write"
    n = bank.refresh()
    assert n >= 2 and all(not k.startswith(".") for k in bank.keys())
    for key in bank.keys():
        assert bank.get(key).rgb.shape == (64, 67, 3)
    assert bank.verify() == []
    assert bank.cleanup_temp() == len(temps)
    assert bank.temp_files() == [] and bank.refresh() == n


def test_cleanup_keeps_live_writers_temp_files(tmp_path: Path) -> None:
    bank = OutlierBank(tmp_path)
    live = bank._temp_path(tmp_path)
    live.write_bytes(b"in progress")
    assert bank.cleanup_temp() == 0 and live.exists()
    assert bank.cleanup_temp(max_age_s=-1) == 1 and not live.exists()


def test_concurrent_writers(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    # Overlapping ranges: both processes race on keys 20..29.
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), a, b)) for a, b in ((0, 30), (20, 50))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    bank = OutlierBank(tmp_path, mode="r")
    assert len(bank) == 50
    assert set(bank.keys()) == {OutlierBank.make_key("job", i) for i in range(50)}
    assert bank.verify() == [] and bank.temp_files() == []
    assert sorted(e.seed for _, e in bank.iter_entries()) == list(range(50))


def test_missing_bank_and_bad_keys(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OutlierBank(tmp_path / "nope", mode="r")
    with pytest.raises(ValueError, match="mode"):
        OutlierBank(tmp_path, mode="w")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keys"):
        OutlierBank(tmp_path).add(_entry(0), key="../escape")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bank.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not an outlier bank"):
        OutlierBank(tmp_path / "other")
