"""Datasets (Cityscapes, OOD benchmarks, shifted domains, image folders, demo scenes), typed samples, transforms,
epoch-keyed sampling, DataModules, and the QC tables, thresholds and filtered views that datasets read.

Exports resolve lazily, so importing one dataset does not import Lightning or albumentations.
"""

from __future__ import annotations

from synthrel_lightning._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "DatasetError": "synthrel_lightning.data.io",
    "read_image": "synthrel_lightning.data.io",
    "read_label": "synthrel_lightning.data.io",
    "SegmentationDataset": "synthrel_lightning.data.base",
    "CityscapesDataset": "synthrel_lightning.data.cityscapes",
    "RoadAnomalyDataset": "synthrel_lightning.data.benchmarks",
    "SMIYCDataset": "synthrel_lightning.data.benchmarks",
    "FishyscapesLostAndFoundDataset": "synthrel_lightning.data.benchmarks",
    "ACDCDataset": "synthrel_lightning.data.shifted",
    "DarkZurichDataset": "synthrel_lightning.data.shifted",
    "SyntheticFramesDataset": "synthrel_lightning.data.synthetic",
    "SegmentationTransform": "synthrel_lightning.data.transforms",
    "train_transform": "synthrel_lightning.data.transforms",
    "eval_transform": "synthrel_lightning.data.transforms",
    "denormalize": "synthrel_lightning.data.transforms",
    "normalize_images": "synthrel_lightning.data.transforms",
    "RandomScaleCrop": "synthrel_lightning.data.augmentations",
    "DecodedCache": "synthrel_lightning.data.cache",
    "write_demo_cityscapes": "synthrel_lightning.data.demo",
    "KeyedDataset": "synthrel_lightning.data.keyed",
    "EpochSampler": "synthrel_lightning.data.sampler",
    "Sample": "synthrel_lightning.data.sample",
    "Batch": "synthrel_lightning.data.sample",
    "SampleKey": "synthrel_lightning.data.sample",
    "collate_samples": "synthrel_lightning.data.collate",
    "FolderDataset": "synthrel_lightning.data.folder",
    "SegmentationDataModule": "synthrel_lightning.data.datamodule",
    "CityscapesOODDataModule": "synthrel_lightning.data.datamodule",
    "DemoDataModule": "synthrel_lightning.data.demo_datamodule",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
