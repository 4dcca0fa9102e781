"""The benchmark's model and data sources: the recipe's OODSegmenter, its DataModule, in-memory batches (mode a)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .config import SEGFORMER_B0, FitBenchConfig


def build_model(config: FitBenchConfig) -> L.LightningModule:
    """The recipe's OODSegmenter with a random SegFormer-B0."""
    from synthrel_lightning.losses import CrossEntropy, SigmoidSumRejection
    from synthrel_lightning.models import HFSegformer, OODSegmenter

    torch.manual_seed(config.seed)
    return OODSegmenter(
        segmenter=HFSegformer(checkpoint=None, num_classes=19, config=dict(SEGFORMER_B0)),
        num_classes=19,
        losses=[CrossEntropy(), SigmoidSumRejection(weight=0.5)],
        ood_score="sigmoid_sum",
        compile_losses=config.compile_losses,
        optimizer=functools.partial(torch.optim.AdamW, lr=6e-5, weight_decay=0.01),
        scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=20),
        summary=False,
    )


def datamodule_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check ``--data-option`` keys against ``CityscapesOODDataModule``'s constructor."""
    from synthrel_lightning.data import CityscapesOODDataModule

    accepted = set(inspect.signature(CityscapesOODDataModule.__init__).parameters) - {"self"}
    managed = {"root", "outliers"}
    for key in options:
        if key in managed:
            raise ValueError(f"--data-option {key}: set by the benchmark itself (it owns {sorted(managed)})")
        if key not in accepted:
            raise ValueError(
                f"--data-option {key}: not a CityscapesOODDataModule argument; expected one of {sorted(accepted)}"
            )
    return dict(options)


def make_datamodule(config: FitBenchConfig, root: Path, bank: Path | None) -> L.LightningDataModule:
    """The recipe's CityscapesOODDataModule over ``root``, mixing outliers from ``bank`` when given."""
    from synthrel_lightning.data import CityscapesOODDataModule
    from synthrel_lightning.synthesis import BankSource, OutlierMixer, PlacementSampler

    outliers = None
    if bank is not None:
        outliers = OutlierMixer(
            source=BankSource(bank),
            probability=config.probability,
            num_objects=(1, 3),
            placement=PlacementSampler(drivable_ids=[0, 1], min_overlap=0.3),
            seed=0,
        )
    kwargs: dict[str, Any] = dict(
        root=root,
        outliers=outliers,
        crop_size=tuple(config.crop_size),
        scale_range=tuple(config.scale_range),
        batch_size=config.batch_size,
        eval_batch_size=2,
        num_workers=config.workers,
        seed=config.seed,
    )
    kwargs.update(datamodule_options(config.data_options))
    return CityscapesOODDataModule(**kwargs)


class _Cycle(Dataset):
    """``length`` items drawn in turn from ``items``."""

    def __init__(self, items: Sequence[Any], length: int) -> None:
        self.items, self.length = list(items), int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.items[index % len(self.items)]


class MemoryDataModule(L.LightningDataModule):
    """Serves pre-collated batches (already on the device) in turn; batch hooks are those of ``source``."""

    def __init__(self, batches: Sequence[dict[str, Any]], length: int, source: L.LightningDataModule) -> None:
        super().__init__()
        self.batches, self.length, self.source = list(batches), int(length), source

    def setup(self, stage: str | None = None) -> None:
        """Attach the trainer to the source, whose batch hooks may read it."""
        self.source.trainer = self.trainer

    def train_dataloader(self) -> DataLoader:
        """The batches, in turn, ``length`` of them, collated already."""
        return DataLoader(_Cycle(self.batches, self.length), batch_size=None, shuffle=False, num_workers=0)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The source DataModule's hook."""
        return self.source.on_before_batch_transfer(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """The source DataModule's hook."""
        return self.source.transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The source DataModule's hook."""
        return self.source.on_after_batch_transfer(batch, dataloader_idx)


def collect_batches(datamodule: L.LightningDataModule, n: int, device: torch.device) -> list[dict[str, Any]]:
    """The first ``n`` batches of the DataModule's training loader, as the loader yields them, moved to ``device``."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(move_data_to_device(batch, device))
        if len(batches) == n:
            break
    if len(batches) < n:
        raise RuntimeError(f"collect_batches: the training loader gave {len(batches)} batches, {n} wanted")
    return batches


__all__ = ["MemoryDataModule", "build_model", "collect_batches", "datamodule_options", "make_datamodule"]
