"""Exact resume: every random draw of the training data is keyed by (seed, epoch, index).

A real Trainer fit of 2 epochs and a fit of 1 epoch + ``fit(ckpt_path=...)`` serve the very
same batches (hashed), end with the same weights and log the same metrics, whatever the
number of DataLoader workers.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from synthrel_lightning.data import DemoDataModule, EpochSampler, KeyedDataset, SampleKey, train_transform
from synthrel_lightning.losses import CrossEntropy, UniformOutlierExposure
from synthrel_lightning.models import OODSegmenter, TinySegmenter
from synthrel_lightning.synthesis import OutlierMixer, ProceduralObjectSource


class BatchHashes(Callback):
    """Records (epoch, sha256 of image/label/ood/names) of every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        h = hashlib.sha256()
        for key in ("image", "label", "ood"):
            h.update(batch[key].detach().cpu().contiguous().numpy().tobytes())
        h.update("|".join(batch["name"]).encode())
        self.seen.append((trainer.current_epoch, h.hexdigest()))


def _datamodule(root: Path, workers: int) -> DemoDataModule:
    return DemoDataModule(
        root=root,
        num_train=8,
        num_val=2,
        image_size=(48, 96),
        crop_size=(32, 64),
        scale_range=(0.75, 1.5),
        batch_size=4,
        eval_batch_size=2,
        num_workers=workers,
        outliers=OutlierMixer(ProceduralObjectSource(size_range=(8, 20)), probability=0.7, num_objects=(1, 2)),
    )


def _fit(tmp: Path, root: Path, epochs: int, workers: int, ckpt: Path | None = None) -> tuple[L.Trainer, BatchHashes]:
    L.seed_everything(0)
    model = OODSegmenter(
        TinySegmenter(num_classes=19, width=4, depth=1),
        losses=[CrossEntropy(), UniformOutlierExposure(weight=0.5)],
        ood_score="msp",
        summary=False,
    )
    hashes = BatchHashes()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp,
        callbacks=[hashes, ModelCheckpoint(dirpath=tmp / "ckpt", save_last=True, save_top_k=0)],
    )
    trainer.fit(model, datamodule=_datamodule(root, workers), ckpt_path=ckpt)
    return trainer, hashes


def test_fit_resume_fit_serves_the_same_batches_and_weights(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    straight, straight_hashes = _fit(tmp_path / "a", root, epochs=2, workers=0)
    first, first_hashes = _fit(tmp_path / "b", root, epochs=1, workers=2)
    resumed, resumed_hashes = _fit(
        tmp_path / "b", root, epochs=2, workers=2, ckpt=tmp_path / "b" / "ckpt" / "last.ckpt"
    )
    assert len(straight_hashes.seen) == 4
    assert first_hashes.seen + resumed_hashes.seen == straight_hashes.seen
    # The two epochs differ (order, outliers and augmentation move on with the epoch).
    assert straight_hashes.seen[0][1] != straight_hashes.seen[2][1]
    for (name, a), b in zip(
        straight.lightning_module.state_dict().items(), resumed.lightning_module.state_dict().values()
    ):
        assert torch.equal(a, b), name
    metrics_a = {k: float(v) for k, v in straight.callback_metrics.items()}
    metrics_b = {k: float(v) for k, v in resumed.callback_metrics.items()}
    assert "val/demo/miou" in metrics_a and metrics_a.keys() == metrics_b.keys()
    for key, value in metrics_a.items():  # NaN: a class absent from both runs' validation frames
        assert value == metrics_b[key] or (math.isnan(value) and math.isnan(metrics_b[key])), key


def test_training_batches_do_not_depend_on_workers_or_loader_instance(tmp_path: Path) -> None:
    """The same epoch gives the same batches with 0 or 2 workers; the next epoch other batches."""

    def epoch_batches(workers: int, epoch: int) -> list[torch.Tensor]:
        dm = _datamodule(tmp_path / "demo", workers)
        dm.setup("fit")
        dm.set_epoch(epoch)
        return [b["image"] for b in dm.train_dataloader()]

    zero, two = epoch_batches(0, 3), epoch_batches(2, 3)
    assert len(zero) == 2 and all(torch.equal(a, b) for a, b in zip(zero, two))
    assert not torch.equal(epoch_batches(0, 4)[0], zero[0])


def test_epoch_sampler_order_is_keyed_by_seed_and_epoch_and_shards_by_rank() -> None:
    data = list(range(10))
    a = list(EpochSampler(data, seed=1, epoch=2))
    assert a == list(EpochSampler(data, seed=1, epoch=2))
    assert all(isinstance(k, SampleKey) and k.epoch == 2 for k in a)
    assert sorted(k.index for k in a) == data
    assert [k.index for k in a] != [k.index for k in EpochSampler(data, seed=1, epoch=3)]
    assert [k.index for k in a] != [k.index for k in EpochSampler(data, seed=2, epoch=2)]
    shards = [[k.index for k in EpochSampler(data, seed=1, epoch=2, num_replicas=3, rank=r)] for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # padded to 12 like DistributedSampler
    assert set().union(*shards) == set(data)
    # Every rank's share is a slice of the same permutation.
    assert [shards[r][i] for i in range(3) for r in range(3)] == [k.index for k in a][:9]
    s = EpochSampler(data, seed=1)
    s.set_epoch(2)
    assert list(s) == a


def test_keyed_dataset_keys_augmentation_by_epoch_and_index(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    frames = [
        {
            "image": rng.integers(0, 255, (40, 60, 3), dtype=np.uint8),
            "label": rng.integers(0, 19, (40, 60), dtype=np.uint8),
            "ood": np.zeros((40, 60), np.uint8),
            "name": f"f{i}",
        }
        for i in range(3)
    ]
    ds = KeyedDataset(frames, train_transform(crop_size=(24, 24), scale_range=(0.8, 1.2)), seed=5)
    first = ds[SampleKey(1, 2)]["image"]
    ds[SampleKey(0, 0)]  # other draws in between change nothing
    assert torch.equal(ds[SampleKey(1, 2)]["image"], first)
    ds.set_epoch(1)
    assert torch.equal(ds[2]["image"], first)  # a plain index uses the dataset's epoch
    assert not torch.equal(ds[SampleKey(2, 2)]["image"], first)
    # Any other callable runs under seeded global generators, restored afterwards.
    noisy = KeyedDataset(frames, lambda s: {**s, "noise": torch.rand(3)}, seed=5)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    n1 = noisy[SampleKey(0, 1)]["noise"]
    assert torch.equal(torch.rand(1), expected_next)
    assert torch.equal(noisy[SampleKey(0, 1)]["noise"], n1)
    assert not torch.equal(noisy[SampleKey(1, 1)]["noise"], n1)
