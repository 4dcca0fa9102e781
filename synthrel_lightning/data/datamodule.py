"""LightningDataModules: Cityscapes-format training (optionally mixed with outliers) + named evaluation sets."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from synthrel_lightning.data.base import Sample, Transform
from synthrel_lightning.synthesis.mixing import OutlierMixer, OutlierMixingDataset

log = logging.getLogger(__name__)


class TransformedDataset(Dataset[Sample]):
    """Applies a sample transform on top of a dataset of raw samples."""

    def __init__(self, base: Dataset[Sample], transform: Transform | None) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        sample = self.base[index]
        return self.transform(sample) if self.transform is not None else sample

    def __getattr__(self, name: str) -> Any:
        # Expose has_semantics/has_ood/names of the wrapped dataset.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


class SegmentationDataModule(L.LightningDataModule):
    """A training set (optionally mixed with synthetic outliers) and named evaluation sets.

    Every evaluation set appears as one validation/test dataloader, in order, and its
    name is in :attr:`val_set_names` / :attr:`test_set_names`, which the OOD segmenter
    uses to key its metrics (``val/<name>/<metric>``). Usable in a plain
    ``lightning.Trainer`` or, after ``prepare_data()`` and ``setup()``, as plain
    DataLoaders in any PyTorch loop (call :meth:`set_epoch` each epoch there).
    Datasets hold raw samples (no transform); the module applies its transforms.
    """

    def __init__(
        self,
        train_set: Dataset[Sample] | None = None,
        val_sets: Mapping[str, Dataset[Sample]] | None = None,
        test_sets: Mapping[str, Dataset[Sample]] | None = None,
        outliers: OutlierMixer | None = None,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        predict_set: str | None = None,
    ) -> None:
        super().__init__()
        self.train_set = train_set
        self.val_sets = dict(val_sets or {})
        self.test_sets = dict(test_sets or {})
        self.outliers = outliers
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.predict_set = predict_set
        self._train: Dataset[Sample] | None = None
        self._val: dict[str, Dataset[Sample]] = {}
        self._test: dict[str, Dataset[Sample]] = {}
        self._epoch = 0

    # ------------------------------------------------------------------ building
    def build_sets(self) -> None:
        """Hook for subclasses that build ``train_set``/``val_sets``/``test_sets`` lazily (in setup)."""

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets and wrap them with outlier mixing and transforms."""
        if self._train is not None or self._val or self._test:
            return
        self.build_sets()
        if self.train_set is not None:
            if self.outliers is not None:
                self._train = OutlierMixingDataset(self.train_set, self.outliers, transform=self.train_transform)
            else:
                self._train = TransformedDataset(self.train_set, self.train_transform)
        self._val = {name: TransformedDataset(ds, self.eval_transform) for name, ds in self.val_sets.items()}
        self._test = {name: TransformedDataset(ds, self.eval_transform) for name, ds in self.test_sets.items()}
        self.set_epoch(self._epoch)

    @property
    def val_set_names(self) -> list[str]:
        """Names of the validation dataloaders, in order."""
        return list(self.val_sets)

    @property
    def test_set_names(self) -> list[str]:
        """Names of the test dataloaders, in order (the validation sets when no test set is given)."""
        return list(self.test_sets) if self.test_sets else list(self.val_sets)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose seeded outlier draws the training set serves."""
        self._epoch = int(epoch)
        if self._train is not None and hasattr(self._train, "set_epoch"):
            self._train.set_epoch(self._epoch)

    # --------------------------------------------------------------- dataloaders
    def _loader(self, dataset: Dataset[Sample], train: bool) -> DataLoader[Sample]:
        sampler = None
        if not train and torch.distributed.is_available() and torch.distributed.is_initialized():
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            # Every frame exactly once across processes: a padding DistributedSampler would
            # count repeated frames in the dataset-level metrics.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=sampler,
            drop_last=train and len(dataset) >= self.batch_size,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            # Not persistent: workers must re-read the dataset after set_epoch().
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader[Sample]:
        """The (mixed) training loader."""
        if self._train is None:
            raise RuntimeError(f"{type(self).__name__}: no training set configured (or setup() not called)")
        return self._loader(self._train, train=True)

    def val_dataloader(self) -> list[DataLoader[Sample]]:
        """One loader per named validation set."""
        return [self._loader(ds, train=False) for ds in self._val.values()]

    def test_dataloader(self) -> list[DataLoader[Sample]]:
        """One loader per named test set (the validation sets when none is given)."""
        sets = self._test if self._test else self._val
        return [self._loader(ds, train=False) for ds in sets.values()]

    def predict_dataloader(self) -> DataLoader[Sample]:
        """The loader of ``predict_set`` (default: the first test or validation set)."""
        sets = {**self._val, **self._test}
        if not sets:
            raise RuntimeError(f"{type(self).__name__}: no evaluation set to predict on")
        name = self.predict_set or (self.test_set_names or self.val_set_names)[0]
        if name not in sets:
            raise ValueError(f"{type(self).__name__}: predict_set {name!r} is not one of {sorted(sets)}")
        return self._loader(sets[name], train=False)


class CityscapesOODDataModule(SegmentationDataModule):
    """Cityscapes (official layout) for training/validation, mixed with synthetic outliers.

    Args:
        root: Cityscapes root (``leftImg8bit/`` and ``gtFine/``).
        outliers: an outlier mixer for training frames (e.g.
            :class:`~synthrel_lightning.synthesis.OutlierMixer` over an outlier bank);
            ``None`` trains on real frames only.
        val_outliers: an outlier mixer applied with fixed seeds to the validation frames,
            served as an extra evaluation set named ``<name>_objects`` (synthetic OOD objects).
        extra_val_sets / extra_test_sets: more named evaluation sets (Road Anomaly,
            SMIYC, Fishyscapes, ACDC, Dark Zurich, synthetic domain sets, ...).
        crop_size / scale_range / eval_size: training crop (H, W), scale augmentation and
            evaluation resize (None = native size).
    """

    def __init__(
        self,
        root: str | Path,
        name: str = "cityscapes",
        train_split: str = "train",
        val_split: str = "val",
        outliers: OutlierMixer | None = None,
        val_outliers: OutlierMixer | None = None,
        extra_val_sets: dict[str, Dataset] | None = None,
        extra_test_sets: dict[str, Dataset] | None = None,
        crop_size: tuple[int, int] = (512, 1024),
        scale_range: tuple[float, float] = (0.5, 2.0),
        eval_size: tuple[int, int] | None = None,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        on_error: str = "raise",
        predict_set: str | None = None,
    ) -> None:
        from synthrel_lightning.data.transforms import eval_transform as make_eval
        from synthrel_lightning.data.transforms import train_transform as make_train

        super().__init__(
            outliers=outliers,
            train_transform=train_transform or make_train(crop_size=tuple(crop_size), scale_range=tuple(scale_range)),
            eval_transform=eval_transform or make_eval(size=None if eval_size is None else tuple(eval_size)),
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            predict_set=predict_set,
        )
        self.root = Path(root)
        self.name = name
        self.train_split = train_split
        self.val_split = val_split
        self.val_outliers = val_outliers
        self.extra_val_sets = dict(extra_val_sets or {})
        self.extra_test_sets = dict(extra_test_sets or {})
        self.max_train_samples = max_train_samples
        self.max_val_samples = max_val_samples
        self.on_error = on_error
        for key in self.extra_val_sets:
            if key in (name, f"{name}_objects"):
                raise ValueError(f"{type(self).__name__}: extra set name {key!r} collides with a built-in set name")
        self.val_sets = {
            name: None,
            **({f"{name}_objects": None} if val_outliers is not None else {}),
            **self.extra_val_sets,
        }  # type: ignore[dict-item]
        self.test_sets = dict(self.extra_test_sets)

    def build_sets(self) -> None:
        """Index the Cityscapes splits (no decoding)."""
        from synthrel_lightning.data.cityscapes import CityscapesDataset

        self.train_set = CityscapesDataset(
            self.root, split=self.train_split, on_error=self.on_error, max_samples=self.max_train_samples
        )  # type: ignore[arg-type]
        val = CityscapesDataset(
            self.root, split=self.val_split, on_error=self.on_error, max_samples=self.max_val_samples
        )  # type: ignore[arg-type]
        sets: dict[str, Dataset[Sample]] = {self.name: val}
        if self.val_outliers is not None:
            # Fixed epoch: the synthetic evaluation set is the same at every validation.
            sets[f"{self.name}_objects"] = OutlierMixingDataset(val, self.val_outliers, transform=None)
        sets.update(self.extra_val_sets)
        self.val_sets = sets


class DemoDataModule(CityscapesOODDataModule):
    """The embedded demo: procedural street scenes in the Cityscapes layout, with procedural outliers.

    ``prepare_data`` writes the scenes under ``root`` (once; an interrupted write resumes).
    """

    def __init__(
        self,
        root: str | Path = "outputs/demo/cityscapes",
        num_train: int = 64,
        num_val: int = 16,
        image_size: tuple[int, int] = (128, 256),
        scene_seed: int = 0,
        outliers: OutlierMixer | None = None,
        val_outliers: OutlierMixer | None = None,
        extra_val_sets: dict[str, Dataset] | None = None,
        crop_size: tuple[int, int] = (128, 256),
        scale_range: tuple[float, float] = (0.75, 1.5),
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            name="demo",
            outliers=outliers,
            val_outliers=val_outliers,
            extra_val_sets=extra_val_sets,
            crop_size=crop_size,
            scale_range=scale_range,
            train_transform=train_transform,
            eval_transform=eval_transform,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        self.num_train = num_train
        self.num_val = num_val
        self.image_size = tuple(image_size)
        self.scene_seed = scene_seed

    def prepare_data(self) -> None:
        """Write the procedural scenes (skipped for frames already on disk)."""
        from synthrel_lightning.data.demo import write_demo_cityscapes

        write_demo_cityscapes(self.root, self.num_train, self.num_val, self.image_size, self.scene_seed)  # type: ignore[arg-type]

    def build_sets(self) -> None:
        """Write the scenes if needed (plain-loop users may skip prepare_data), then index them."""
        self.prepare_data()
        super().build_sets()
