"""LightningDataModules: Cityscapes-format training (optionally mixed with outliers) + named evaluation sets.

Every random choice of the training data is keyed by ``(seed, epoch, sample index)``: the
order comes from an :class:`~synthrel_lightning.data.sampler.EpochSampler`, outliers and
augmentations from :class:`~synthrel_lightning.data.keyed.KeyedDataset`. A run resumed from
a checkpoint therefore sees exactly the batches an uninterrupted run sees, with any number
of DataLoader workers.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from synthrel_lightning.data.base import OnError, Transform, UnbuiltSet
from synthrel_lightning.data.collate import collate_samples
from synthrel_lightning.data.keyed import KeyedDataset
from synthrel_lightning.data.sample import Sample
from synthrel_lightning.data.sampler import EpochSampler
from synthrel_lightning.labels import NUM_CLASSES, OOD_ID
from synthrel_lightning.synthesis.mixing import OutlierMixer

log = logging.getLogger(__name__)

TRAIN_SET = "train"
"""The key of the training set in :meth:`SegmentationDataModule.skipped_counts`."""


def _resolve_seed(seed: int | None) -> int:
    """``seed``, else the seed given to ``seed_everything`` (``PL_GLOBAL_SEED``), else 0."""
    if seed is not None:
        return int(seed)
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def _check_frames(dataset: Any) -> None:
    """Run a skip-mode dataset's frame check once, each DDP rank checking a share of the frames."""
    if getattr(dataset, "checked", True) or not callable(getattr(dataset, "find_bad", None)):
        return
    n = len(dataset.frames)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        mine = dataset.find_bad(range(rank, n, world))
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, mine)
        bad = {int(i): r for part in gathered for i, r in part.items()}
    else:
        bad = dataset.find_bad()
    dataset.drop(bad)


class RemapOOD:
    """Collate samples (:func:`~synthrel_lightning.data.collate.collate_samples`), then relabel OOD pixels of ``label``.

    Picklable, so DataLoader workers run it.
    """

    def __init__(self, value: int) -> None:
        self.value = int(value)

    def __call__(self, samples: Any) -> Any:
        batch = collate_samples(samples)
        label = batch["label"]
        batch["label"] = label.masked_fill(label == OOD_ID, self.value)
        return batch


class SegmentationDataModule(L.LightningDataModule):
    """A training set (optionally mixed with synthetic outliers) and named evaluation sets.

    Every evaluation set appears as one validation/test dataloader, in order, and its
    name is in :attr:`val_set_names` / :attr:`test_set_names`, which the OOD segmenter
    uses to key its metrics (``val/<name>/<metric>``). Loaders yield
    :class:`~synthrel_lightning.data.sample.Batch` dicts; frames of different sizes in one
    evaluation batch are padded with void (see :func:`~synthrel_lightning.data.collate.collate_samples`).
    Usable in a plain ``lightning.Trainer`` or, after ``prepare_data()`` and ``setup()``, as
    plain DataLoaders in any PyTorch loop (call :meth:`set_epoch` before each epoch there).
    Datasets hold raw samples (no transform); the module applies its transforms.

    Args:
        seed: seed of the training order and augmentations; ``None`` takes the seed given to
            ``seed_everything`` (``PL_GLOBAL_SEED``), else 0.
        predict_set: the evaluation set ``predict`` runs on (default: the first test or validation set).
        predict_folder: a folder of images to predict on instead (JPEG/PNG/WebP, recursive,
            see :class:`~synthrel_lightning.data.folder.FolderDataset`).
        decoded_cache: a folder (outside every dataset folder) where decoded frames of the
            file-backed training and evaluation sets are kept as memory-mapped ``.npy`` files
            (see :class:`~synthrel_lightning.data.cache.DecodedCache`): the first epoch decodes
            and stores, later epochs skip PNG decoding. ``None`` (default) decodes every time.
        prefetch_factor: batches each DataLoader worker prepares ahead (``None``: PyTorch's default, 2).
        remap_ood_to: the label OOD pixels carry in ``batch["label"]``. ``None`` (default) keeps
            :data:`~synthrel_lightning.labels.OOD_ID` (254), which this package's losses and metrics
            read; a module of your own whose loss ignores only void, e.g.
            ``F.cross_entropy(..., ignore_index=255)``, would index class 254 and fail: give it
            ``remap_ood_to=255`` (OOD pixels become void in ``label``; ``batch["ood"]`` still marks them).
            Applies to every loader (training and evaluation).

    Transforms may emit uint8 images (``SegmentationTransform(output="uint8")``, e.g.
    ``normalize_on_device=True`` in the Cityscapes modules): :meth:`on_after_batch_transfer`
    then normalises them on the device with the transform's ``mean``/``std``, so a
    LightningModule always receives float32 images. A plain loop that reads the loaders
    itself calls ``datamodule.on_after_batch_transfer(batch, 0)`` after moving the batch.
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
        predict_folder: str | Path | None = None,
        seed: int | None = None,
        decoded_cache: str | Path | None = None,
        prefetch_factor: int | None = None,
        remap_ood_to: int | None = None,
    ) -> None:
        super().__init__()
        if remap_ood_to is not None and not (NUM_CLASSES <= int(remap_ood_to) <= 255 and int(remap_ood_to) != OOD_ID):
            raise ValueError(
                f"{type(self).__name__}: remap_ood_to must be None (keep {OOD_ID}) or a label outside the "
                f"{NUM_CLASSES} classes (e.g. 255, void), got {remap_ood_to!r}"
            )
        self.remap_ood_to = None if remap_ood_to is None else int(remap_ood_to)
        if prefetch_factor is not None and int(prefetch_factor) < 1:
            raise ValueError(f"{type(self).__name__}: prefetch_factor must be >= 1 or None, got {prefetch_factor!r}")
        self.decoded_cache = None if decoded_cache is None else Path(decoded_cache).expanduser()
        self.prefetch_factor = None if prefetch_factor is None else int(prefetch_factor)
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
        self.predict_folder = None if predict_folder is None else Path(predict_folder).expanduser()
        self.seed = seed
        self._train: KeyedDataset | None = None
        self._val: dict[str, KeyedDataset] = {}
        self._test: dict[str, KeyedDataset] = {}
        self._predict: KeyedDataset | None = None
        self._sampler: EpochSampler | None = None
        self._epoch = 0
        self._built: set[str] = set()

    # ------------------------------------------------------------------ building
    def build_sets(self, stage: str | None = None) -> None:
        """Hook for subclasses that build ``train_set``/``val_sets``/``test_sets`` lazily (in setup).

        Build only what ``stage`` needs: the training set for ``"fit"`` (or ``None``), the
        evaluation sets for every stage.
        """

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs, check skip-mode datasets, wrap them with mixing and transforms."""
        needs_train = stage in (None, "fit")
        needs_predict = stage in (None, "predict") and self.predict_folder is not None
        needs_eval = not (stage == "predict" and self.predict_folder is not None)
        if (
            ("eval" in self._built or not needs_eval)
            and ("train" in self._built or not needs_train)
            and ("predict" in self._built or not needs_predict)
        ):
            return
        if inspect.signature(self.build_sets).parameters:
            self.build_sets(stage)
        else:  # an override written without the stage argument builds everything
            self.build_sets()
        seed = _resolve_seed(self.seed)
        if needs_train and self.train_set is not None and "train" not in self._built:
            _check_frames(self.train_set)
            self._train = KeyedDataset(
                self._cached(self.train_set), self.train_transform, mixer=self.outliers, seed=seed
            )
            self._built.add("train")
        if needs_eval and "eval" not in self._built:
            for ds in (*self.val_sets.values(), *self.test_sets.values()):
                _check_frames(getattr(ds, "base", ds))
            self._val = {
                n: KeyedDataset(self._cached(ds), self.eval_transform, seed=seed, fixed_epoch=0)
                for n, ds in self.val_sets.items()
            }
            self._test = {
                n: KeyedDataset(self._cached(ds), self.eval_transform, seed=seed, fixed_epoch=0)
                for n, ds in self.test_sets.items()
            }
            self._built.add("eval")
        if needs_predict and "predict" not in self._built:
            from synthrel_lightning.data.folder import FolderDataset

            folder = FolderDataset(self.predict_folder, on_error=getattr(self, "on_error", "raise"))  # type: ignore[arg-type]
            _check_frames(folder)
            self._predict = KeyedDataset(folder, self.eval_transform, seed=seed, fixed_epoch=0)
            self._built.add("predict")
        self.set_epoch(self._epoch)

    def _cached(self, dataset: Dataset[Sample]) -> Dataset[Sample]:
        """``dataset`` behind the decoded-frame cache when one is configured and it is file-backed."""
        from synthrel_lightning.data.base import SegmentationDataset

        if self.decoded_cache is None or not isinstance(dataset, SegmentationDataset):
            return dataset
        from synthrel_lightning.data.cache import DecodedCache

        return DecodedCache(dataset, self.decoded_cache)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise uint8 batch images on the device (float32, the transform's mean/std); others pass through."""
        if not isinstance(batch, dict) or not isinstance(batch.get("image"), torch.Tensor):
            return batch
        if batch["image"].dtype != torch.uint8:
            return batch
        from synthrel_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_images

        trainer = getattr(self, "trainer", None)
        training = trainer is not None and bool(getattr(trainer, "training", False))
        ordered = (
            (self.train_transform, self.eval_transform) if training else (self.eval_transform, self.train_transform)
        )
        source = next((t for t in ordered if getattr(t, "output", None) == "uint8"), None)
        mean = getattr(source, "mean", IMAGENET_MEAN)
        std = getattr(source, "std", IMAGENET_STD)
        return {**batch, "image": normalize_images(batch["image"], mean, std)}

    @property
    def val_set_names(self) -> list[str]:
        """Names of the validation dataloaders, in order."""
        return list(self.val_sets)

    @property
    def test_set_names(self) -> list[str]:
        """Names of the test dataloaders, in order (the validation sets when no test set is given)."""
        return list(self.test_sets) if self.test_sets else list(self.val_sets)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order, outlier draws and augmentations the training loader serves."""
        self._epoch = int(epoch)
        if self._sampler is not None:
            self._sampler.set_epoch(self._epoch)  # forwards to the training set
        elif self._train is not None:
            self._train.set_epoch(self._epoch)

    def skipped_counts(self) -> dict[str, int]:
        """Frames left out of each set by ``on_error="skip"`` (``"train"`` and every evaluation set's name)."""
        counts: dict[str, int] = {}
        if self._train is not None:
            counts[TRAIN_SET] = int(getattr(self._train, "num_skipped", 0))
        for name, ds in {**self._val, **self._test}.items():
            counts[name] = int(getattr(ds, "num_skipped", 0))
        if self._predict is not None:
            counts["predict"] = int(getattr(self._predict, "num_skipped", 0))
        return counts

    # --------------------------------------------------------------- dataloaders
    def _loader(self, dataset: Dataset[Sample], train: bool) -> DataLoader[Sample]:
        sampler: torch.utils.data.Sampler | None = None
        if train:
            trainer = getattr(self, "trainer", None)
            if trainer is not None:
                # Lightning creates the iterator (and forks workers) before it calls set_epoch.
                self._epoch = int(trainer.current_epoch)
            sampler = self._sampler = EpochSampler(dataset, seed=_resolve_seed(self.seed), epoch=self._epoch)  # type: ignore[arg-type]
            self.set_epoch(self._epoch)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            # Every frame exactly once across processes: a padding DistributedSampler would
            # count repeated frames in the dataset-level metrics.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            collate_fn=collate_samples if self.remap_ood_to is None else RemapOOD(self.remap_ood_to),
            drop_last=train and len(dataset) >= self.batch_size,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            # Not persistent: workers re-read the outlier source (e.g. a growing bank) every epoch.
            persistent_workers=False,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader[Sample]:
        """The (mixed) training loader, in the order of the current epoch."""
        if self._train is None:
            raise RuntimeError(f"{type(self).__name__}: no training set configured (or setup('fit') not called)")
        return self._loader(self._train, train=True)

    def val_dataloader(self) -> list[DataLoader[Sample]]:
        """One loader per named validation set."""
        return [self._loader(ds, train=False) for ds in self._val.values()]

    def test_dataloader(self) -> list[DataLoader[Sample]]:
        """One loader per named test set (the validation sets when none is given)."""
        sets = self._test if self._test else self._val
        return [self._loader(ds, train=False) for ds in sets.values()]

    def predict_dataloader(self) -> DataLoader[Sample]:
        """The loader of ``predict_folder`` if given, else of ``predict_set`` (default: the first evaluation set)."""
        if self._predict is not None:
            return self._loader(self._predict, train=False)
        sets = {**self._val, **self._test}
        if not sets:
            raise RuntimeError(f"{type(self).__name__}: no evaluation set to predict on")
        name = self.predict_set or (self.test_set_names or self.val_set_names)[0]
        if name not in sets:
            raise ValueError(f"{type(self).__name__}: predict_set {name!r} is not one of {sorted(sets)}")
        return self._loader(sets[name], train=False)


class CityscapesOODDataModule(SegmentationDataModule):
    """Cityscapes (official layout) for training/validation, mixed with synthetic outliers.

    Reads ``root`` and never writes into it. Only the splits a stage needs are indexed:
    ``validate``/``test``/``predict`` need no training split.

    Args:
        root: Cityscapes root (``leftImg8bit/`` and ``gtFine/``).
        outliers: an outlier mixer for training frames (e.g.
            :class:`~synthrel_lightning.synthesis.OutlierMixer` over an outlier bank);
            ``None`` trains on real frames only.
        val_outliers: an outlier mixer applied with fixed seeds to the validation frames,
            served as an extra evaluation set named ``<name>_objects`` (synthetic OOD objects).
        extra_val_sets / extra_test_sets: more named evaluation sets (Road Anomaly,
            SMIYC, Fishyscapes, ACDC, Dark Zurich, synthetic domain sets, ...); one set can
            be added from the command line with
            ``--data.init_args.extra_val_sets.<name>=<class path> --data.init_args.extra_val_sets.<name>.root=...``.
        crop_size / scale_range / eval_size: training crop (H, W), scale augmentation and
            evaluation resize (None = native size).
        on_error: ``"skip"`` leaves unreadable frames out of the Cityscapes splits (see
            :class:`~synthrel_lightning.data.base.SegmentationDataset`); counts in :meth:`skipped_counts`.
        normalize_on_device: the default training transform emits uint8 images, normalised on the
            device by :meth:`on_after_batch_transfer` (4x fewer bytes through the worker queue and
            pinned memory, no float work in the workers); batches read straight from
            ``train_dataloader()`` then hold uint8 images.
        decoded_cache / prefetch_factor / remap_ood_to: see :class:`SegmentationDataModule`.
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
        on_error: OnError = "raise",
        predict_set: str | None = None,
        predict_folder: str | Path | None = None,
        seed: int | None = None,
        normalize_on_device: bool = False,
        decoded_cache: str | Path | None = None,
        prefetch_factor: int | None = None,
        remap_ood_to: int | None = None,
    ) -> None:
        from synthrel_lightning.data.transforms import eval_transform as make_eval
        from synthrel_lightning.data.transforms import train_transform as make_train

        default_train = make_train(
            crop_size=(crop_size[0], crop_size[1]),  # lists from a YAML config too
            scale_range=(scale_range[0], scale_range[1]),
            output="uint8" if normalize_on_device else "float",
        )
        super().__init__(
            outliers=outliers,
            train_transform=train_transform or default_train,
            eval_transform=eval_transform or make_eval(size=eval_size and (eval_size[0], eval_size[1])),
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            predict_set=predict_set,
            predict_folder=predict_folder,
            seed=seed,
            decoded_cache=decoded_cache,
            prefetch_factor=prefetch_factor,
            remap_ood_to=remap_ood_to,
        )
        self.normalize_on_device = normalize_on_device
        self.root = Path(root)
        self.name: str = name  # LightningDataModule declares it optional
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
            name: UnbuiltSet(name),
            **({f"{name}_objects": UnbuiltSet(f"{name}_objects")} if val_outliers is not None else {}),
            **self.extra_val_sets,
        }
        self.test_sets = dict(self.extra_test_sets)

    def build_sets(self, stage: str | None = None) -> None:
        """Index the Cityscapes splits ``stage`` needs (no decoding)."""
        from synthrel_lightning.data.cityscapes import CityscapesDataset

        if stage in (None, "fit") and self.train_set is None:
            self.train_set = CityscapesDataset(
                self.root, split=self.train_split, on_error=self.on_error, max_samples=self.max_train_samples
            )
        if "eval" in self._built or (stage == "predict" and self.predict_folder is not None):
            return
        val = CityscapesDataset(
            self.root, split=self.val_split, on_error=self.on_error, max_samples=self.max_val_samples
        )
        sets: dict[str, Dataset[Sample]] = {self.name: val}
        if self.val_outliers is not None:
            # Fixed epoch: the synthetic evaluation set is the same at every validation.
            sets[f"{self.name}_objects"] = KeyedDataset(val, mixer=self.val_outliers, fixed_epoch=0)
        sets.update(self.extra_val_sets)
        self.val_sets = sets
