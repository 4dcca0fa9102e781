"""The opt-in decoded-frame cache and uint8 batches normalised on the device, through the public API."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from synthrel_lightning.data import CityscapesDataset, DemoDataModule, write_demo_cityscapes
from synthrel_lightning.data.cache import DecodedCache
from synthrel_lightning.synthesis import OutlierMixer, ProceduralObjectSource


@pytest.fixture()
def scenes(tmp_path: Path) -> Path:
    root = tmp_path / "scenes"
    write_demo_cityscapes(root, num_train=3, num_val=2, size=(32, 64), seed=0)
    return root


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_decoded_cache_serves_the_same_samples_from_outside_the_dataset(tmp_path: Path, scenes: Path) -> None:
    dataset_before = _tree(scenes)
    base = CityscapesDataset(scenes, split="train")
    cache = DecodedCache(base, tmp_path / "cache")
    first = [cache[i] for i in range(len(cache))]
    assert (cache.hits, cache.misses) == (0, 3)
    again = DecodedCache(CityscapesDataset(scenes, split="train"), tmp_path / "cache")  # a new process would see this
    for i, want in enumerate(first):
        got = again[i]
        ref = base[i]
        assert isinstance(got["image"], np.memmap) and not got["image"].flags.writeable
        for key in ("image", "label", "ood"):
            np.testing.assert_array_equal(got[key], ref[key])
            np.testing.assert_array_equal(want[key], ref[key])
        assert got["name"] == ref["name"]
    assert (again.hits, again.misses) == (3, 0)
    assert _tree(scenes) == dataset_before  # nothing written into the dataset folder
    assert len(again) == 3 and again.names == base.names  # the dataset's extras pass through


def test_decoded_cache_decodes_a_changed_file_again(tmp_path: Path, scenes: Path) -> None:
    cache = DecodedCache(CityscapesDataset(scenes, split="train"), tmp_path / "cache")
    old = np.array(cache[0]["image"])
    image_path = cache.frames[0].image
    Image.fromarray(255 - old).save(image_path)
    os.utime(image_path, ns=(1, 1))  # a different modification time, whatever the clock resolution
    fresh = DecodedCache(CityscapesDataset(scenes, split="train"), tmp_path / "cache")
    np.testing.assert_array_equal(fresh[0]["image"], 255 - old)
    assert fresh.misses == 1


def test_decoded_cache_refuses_the_dataset_folder_and_respects_the_umask(tmp_path: Path, scenes: Path) -> None:
    base = CityscapesDataset(scenes, split="train")
    for inside in (scenes, scenes / "cache"):
        with pytest.raises(ValueError, match="inside the dataset folder"):
            DecodedCache(base, inside)
    with pytest.raises(TypeError, match="file-backed SegmentationDataset"):
        DecodedCache([1, 2], tmp_path / "cache")  # type: ignore[arg-type]
    old = os.umask(0o027)
    try:
        DecodedCache(base, tmp_path / "cache")[0]
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in files)
    assert not any(p.name.startswith(".tmp-") for p in files)


def _first_batches(dm: DemoDataModule, tmp_path: Path, epochs: int = 1) -> list[dict]:
    """The batches a LightningModule's training_step receives (after Lightning's transfer hooks)."""

    class Record(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Conv2d(3, 19, 1)
            self.seen: list[dict] = []

        def training_step(self, batch, idx):
            self.seen.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            return self.net(batch["image"]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    module = Record()
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    return module.seen


def _demo(root: Path, **kwargs) -> DemoDataModule:
    mixer = OutlierMixer(ProceduralObjectSource(size_range=(8, 16)), probability=0.5, seed=0)
    return DemoDataModule(
        root=root, num_train=4, num_val=2, image_size=(64, 128), crop_size=(48, 96), batch_size=2, seed=3,
        outliers=mixer, **kwargs,
    )  # fmt: skip


def test_uint8_batches_reach_the_model_normalised_exactly_like_float_batches(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    plain = _first_batches(_demo(root), tmp_path / "a")
    on_device_dm = _demo(root, normalize_on_device=True)
    on_device = _first_batches(on_device_dm, tmp_path / "b")
    assert len(plain) == len(on_device) == 2
    for p, d in zip(plain, on_device):
        assert p["image"].dtype == d["image"].dtype == torch.float32
        torch.testing.assert_close(d["image"], p["image"], atol=1e-5, rtol=0)
        assert torch.equal(d["label"], p["label"]) and torch.equal(d["ood"], p["ood"])
    # Read straight from the loader (a plain loop), the batch holds uint8 until the hook runs.
    raw = next(iter(on_device_dm.train_dataloader()))
    assert raw["image"].dtype == torch.uint8
    normalised = on_device_dm.on_after_batch_transfer(raw, 0)
    assert normalised["image"].dtype == torch.float32
    assert normalised["image"].abs().max() < 3.0
    # Evaluation batches stay float.
    assert next(iter(on_device_dm.val_dataloader()[0]))["image"].dtype == torch.float32


def test_decoded_cache_in_the_datamodule_gives_identical_batches(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    plain_dm = _demo(root)
    plain = _first_batches(plain_dm, tmp_path / "a")
    cached_dm = _demo(root, decoded_cache=tmp_path / "decoded")
    cold = _first_batches(cached_dm, tmp_path / "b")
    warm_dm = _demo(root, decoded_cache=tmp_path / "decoded")
    warm = _first_batches(warm_dm, tmp_path / "c")
    for p, c, w in zip(plain, cold, warm, strict=True):
        for key in ("image", "label", "ood"):
            assert torch.equal(p[key], c[key]) and torch.equal(p[key], w[key])
    # Evaluation frames go through the cache too (read-only memory maps through the eval transform).
    val_plain = next(iter(plain_dm.val_dataloader()[0]))
    val_cached = next(iter(warm_dm.val_dataloader()[0]))
    val_cached = next(iter(warm_dm.val_dataloader()[0]))  # the second pass is served from the cache
    for key in ("image", "label", "ood"):
        assert torch.equal(val_plain[key], val_cached[key])
    assert len(list((tmp_path / "decoded").rglob("sample.json"))) == 4 + 2  # every train and val frame
    assert any((tmp_path / "decoded").rglob("image.npy"))
    assert not any(root.rglob("*.npy"))
    with pytest.raises(ValueError, match="prefetch_factor must be >= 1"):
        _demo(root, prefetch_factor=0)


def _entries(cache: DecodedCache) -> list[Path]:
    """The entry folder of every frame of ``cache`` (in frame order)."""
    return [cache._entry(f) for f in cache.frames]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    keep = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(keep.st_atime_ns, keep.st_mtime_ns))  # same size and time: only the content tells


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _same_size_replacement(path: Path) -> None:
    """Replace a PNG by one of other pixels, of the same byte size and modification time."""
    keep = path.stat()
    arr = np.array(Image.open(path))
    arr.reshape(-1)[:7] ^= 1
    Image.fromarray(arr).save(path, compress_level=0)  # stored blocks: the size depends on the shape only
    assert path.stat().st_size == keep.st_size
    os.utime(path, ns=(keep.st_atime_ns, keep.st_mtime_ns))


def _damage(case: str, e0: Path, e1: Path, frame) -> None:  # type: ignore[no-untyped-def]
    image = e0 / "image.npy"
    header = len(image.read_bytes()) - int(np.load(image).nbytes)
    if case == "image bit flip":
        _flip(image, header + 5)
    elif case == "label bit flip":
        _flip(e0 / "label.npy", header + 3)
    elif case == "ood bit flip":
        _flip(e0 / "ood.npy", header + 1)
    elif case == "array header flip":
        _flip(image, 50)  # inside the shape tuple of the .npy header
    elif case == "truncated array":
        image.write_bytes(image.read_bytes()[:-100])
    elif case == "empty array file":
        image.write_bytes(b"")
    elif case == "missing array file":
        image.unlink()
    elif case == "empty record":
        (e0 / "sample.json").write_bytes(b"")
    elif case == "garbled record":
        _flip(e0 / "sample.json", 3)
    elif case == "edited record":
        record = json.loads((e0 / "sample.json").read_text())
        record["values"]["name"] = "someone_else"
        (e0 / "sample.json").write_text(json.dumps(record))
    elif case == "arrays swapped between entries":
        _swap(image, e1 / "image.npy")
    elif case == "records swapped between entries":
        _swap(e0 / "sample.json", e1 / "sample.json")
    elif case == "entries swapped":
        _swap(e0, e1)
    elif case == "source image replaced, time kept":
        _same_size_replacement(frame.image)
    elif case == "source label replaced, time kept":
        _same_size_replacement(frame.label)
    else:
        raise AssertionError(case)


DAMAGE = [
    "image bit flip",
    "label bit flip",
    "ood bit flip",
    "array header flip",
    "truncated array",
    "empty array file",
    "missing array file",
    "empty record",
    "garbled record",
    "edited record",
    "arrays swapped between entries",
    "records swapped between entries",
    "entries swapped",
    "source image replaced, time kept",
    "source label replaced, time kept",
]


@pytest.mark.parametrize("case", DAMAGE)
def test_decoded_cache_detects_every_damaged_or_stale_entry(tmp_path: Path, case: str) -> None:
    root = tmp_path / "scenes"
    write_demo_cityscapes(root, num_train=2, num_val=1, size=(32, 64), seed=0)
    for png in root.rglob("*.png"):  # stored blocks, so that a same-size replacement can be made
        Image.open(png).save(png, compress_level=0)
    cache = DecodedCache(CityscapesDataset(root, split="train"), tmp_path / "cache")
    for i in range(len(cache)):
        cache[i]
    e0, e1 = _entries(cache)
    _damage(case, e0, e1, cache.frames[0])
    base = CityscapesDataset(root, split="train")  # the truth: decoded from the (possibly replaced) sources
    again = DecodedCache(CityscapesDataset(root, split="train"), tmp_path / "cache")  # as a new run sees it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        served = [again[i] for i in range(len(again))]
    for i, got in enumerate(served):
        ref = base[i]
        for key in ("image", "label", "ood"):
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{case}: frame {i} {key}")
        assert got["name"] == ref["name"]
    assert again.misses >= 1, f"{case}: served from the damaged cache"
    messages = [str(w.message) for w in caught]
    if case.startswith("source"):
        assert not messages  # a changed source is an ordinary reason to decode again
    else:
        assert any("damaged" in m and str(tmp_path / "cache") in m for m in messages), (case, messages)
    # the entry is rewritten: a further run reads it back intact
    final = DecodedCache(CityscapesDataset(root, split="train"), tmp_path / "cache")
    for i in range(len(final)):
        np.testing.assert_array_equal(final[i]["image"], base[i]["image"])
    assert (final.hits, final.misses) == (2, 0), case
