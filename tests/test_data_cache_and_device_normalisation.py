"""The opt-in decoded-frame cache and uint8 batches normalised on the device, through the public API."""

from __future__ import annotations

import os
import stat
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
