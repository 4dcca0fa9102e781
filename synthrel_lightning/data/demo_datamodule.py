"""The embedded demo's DataModule: procedural street scenes in the Cityscapes layout, with procedural outliers."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from synthrel_lightning.data.base import Transform
from synthrel_lightning.data.datamodule import CityscapesOODDataModule
from synthrel_lightning.synthesis.mixing import OutlierMixer


def demo_val_outliers() -> OutlierMixer:
    """The demo's held-out evaluation outliers: stars and blobs, checkered or graded, 1-2 per frame, fixed seeds."""
    from synthrel_lightning.synthesis.sources import ProceduralObjectSource

    source = ProceduralObjectSource(size_range=(12, 48), shapes=("star", "blob"), textures=("checker", "gradient"))
    return OutlierMixer(source, probability=1.0, num_objects=(1, 2), seed=1234)


class DemoDataModule(CityscapesOODDataModule):
    """The embedded demo: procedural street scenes in the Cityscapes layout, with procedural outliers.

    ``prepare_data`` writes the scenes under ``root``, a folder the demo owns: it must be new,
    empty or written by the demo before (it holds a ``.synthrel-demo.json`` marker); a folder
    holding anything else — a real dataset — is refused and left untouched. An interrupted
    write resumes.

    ``val_outliers``: ``None`` (default) serves the demo's held-out OOD set ``demo_objects``
    (:func:`demo_val_outliers`: shapes and textures the training outliers never use, fixed seeds),
    so ``val/demo_objects/{ap,auroc,fpr95,...}`` are logged; ``False`` leaves that set out; a
    mixer of your own replaces it.
    """

    def __init__(
        self,
        root: str | Path = "outputs/demo/cityscapes",
        num_train: int = 64,
        num_val: int = 16,
        image_size: tuple[int, int] = (128, 256),
        scene_seed: int = 0,
        outliers: OutlierMixer | None = None,
        val_outliers: OutlierMixer | bool | None = None,
        extra_val_sets: dict[str, Dataset] | None = None,
        crop_size: tuple[int, int] = (128, 256),
        scale_range: tuple[float, float] = (0.75, 1.5),
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        predict_set: str | None = None,
        predict_folder: str | Path | None = None,
        seed: int | None = None,
        normalize_on_device: bool = False,
        decoded_cache: str | Path | None = None,
        prefetch_factor: int | None = None,
        remap_ood_to: int | None = None,
    ) -> None:
        if val_outliers is True:
            raise ValueError("DemoDataModule: val_outliers must be None (the demo's held-out set), False or a mixer")
        super().__init__(
            root=root,
            name="demo",
            outliers=outliers,
            val_outliers=demo_val_outliers() if val_outliers is None else (val_outliers or None),
            extra_val_sets=extra_val_sets,
            crop_size=crop_size,
            scale_range=scale_range,
            train_transform=train_transform,
            eval_transform=eval_transform,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            predict_set=predict_set,
            predict_folder=predict_folder,
            seed=seed,
            normalize_on_device=normalize_on_device,
            decoded_cache=decoded_cache,
            prefetch_factor=prefetch_factor,
            remap_ood_to=remap_ood_to,
        )
        self.num_train = num_train
        self.num_val = num_val
        self.image_size = tuple(image_size)
        self.scene_seed = scene_seed

    def prepare_data(self) -> None:
        """Write the procedural scenes (skipped for frames already on disk)."""
        from synthrel_lightning.data.demo import write_demo_cityscapes

        write_demo_cityscapes(self.root, self.num_train, self.num_val, self.image_size, self.scene_seed)  # type: ignore[arg-type]

    def build_sets(self, stage: str | None = None) -> None:
        """Write the scenes if needed (plain-loop users may skip prepare_data), then index them."""
        self.prepare_data()
        super().build_sets(stage)


__all__ = ["DemoDataModule", "demo_val_outliers"]
