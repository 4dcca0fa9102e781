"""``python -m synthrel_lightning generate``: build an outlier bank, synthetic evaluation frames or domain-shift sets offline.

``task: objects`` (default) inpaints objects (below); ``task: domains`` renders Cityscapes
label maps in new domains with a ControlNet (:func:`generate_domains`) and writes each
domain as a Cityscapes-layout dataset.

Generation is a Lightning predict loop: work items (frame, slot) are sharded over ranks
by Lightning's distributed sampler, :class:`InpaintGenerationModule` runs the
:class:`~synthrel_lightning.synthesis.engine.InpaintingEngine` on a batch of them, and
:class:`BankWriter` commits results to an
:class:`~synthrel_lightning.synthesis.bank.OutlierBank`. Every item has a deterministic
key, object, box and seed derived from (seed, frame, slot), so the output does not depend
on the number of devices and a re-run skips items already in the bank (resume).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from synthrel_lightning.atomic import atomic_save_png
from synthrel_lightning.labels import semantic_to_ood_target
from synthrel_lightning.seeding import derive_seed, numpy_generator
from synthrel_lightning.synthesis.bank import OutlierBank
from synthrel_lightning.synthesis.domains import (
    DomainSample,
    DomainShiftGenerator,
    check_domain_name,
    train_ids_to_label_ids,
)
from synthrel_lightning.synthesis.engine import InpaintingEngine, InpaintResult
from synthrel_lightning.synthesis.placement import PlacementSampler
from synthrel_lightning.synthesis.protocol import snap_size
from synthrel_lightning.synthesis.vocabulary import VocabularyEntry, resolve_vocabulary

__all__ = [
    "InpaintedObjectSource",
    "WorkItemDataset",
    "GenerationDataModule",
    "InpaintGenerationModule",
    "BankWriter",
    "generate",
    "DomainWorkItems",
    "DomainDataModule",
    "DomainGenerationModule",
    "DomainWriter",
    "generate_domains",
    "build_parser",
    "main",
]

log = logging.getLogger(__name__)

WriteKind = Literal["object", "frame", "both"]


def _frame_name(dataset: Any, index: int) -> str | None:
    frames = getattr(dataset, "frames", None)
    if frames is not None and index < len(frames) and hasattr(frames[index], "name"):
        return str(frames[index].name)
    return None


def _raw_image(sample: dict[str, Any], index: int) -> np.ndarray:
    """The uint8 (H, W, 3) image of a raw source sample; a clear error for a transformed one."""
    image = np.asarray(sample["image"])
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(
            f"generate needs raw samples (image uint8 (H, W, 3)); source item {index} has image {image.dtype} {image.shape}. "
            "Do not set a transform on the source dataset."
        )
    return image


def _keys_for(base: str, write: WriteKind) -> list[str]:
    return {"object": [base], "frame": [f"{base}-frame"], "both": [base, f"{base}-frame"]}[write]


class WorkItemDataset(Dataset):
    """The generation work items (frame index, slot) of a source dataset, minus those already done.

    Item ``(i, slot)`` gets its object, box and seed from ``numpy_generator(seed, "generate", i, slot)``,
    so it is the same whatever the rank, worker or number of devices.
    """

    def __init__(
        self,
        source: Dataset,
        vocabulary: Sequence[VocabularyEntry],
        placement: PlacementSampler,
        seed: int = 0,
        objects_per_frame: int = 1,
        max_frames: int | None = None,
        write: WriteKind = "object",
        done: set[str] | None = None,
    ) -> None:
        if not vocabulary:
            raise ValueError("WorkItemDataset needs a non-empty vocabulary")
        if objects_per_frame < 1:
            raise ValueError(f"objects_per_frame must be >= 1, got {objects_per_frame}")
        self.source = source
        self.vocabulary = list(vocabulary)
        self.placement = placement
        self.seed = int(seed)
        self.write = write
        n = len(source) if max_frames is None else min(len(source), int(max_frames))
        all_items = [(i, s) for i in range(n) for s in range(int(objects_per_frame))]
        done = done or set()
        self.items = [(i, s) for i, s in all_items if not all(k in done for k in _keys_for(self.key(i, s), write))]
        self.total = len(all_items)

    def key(self, index: int, slot: int) -> str:
        """The bank key of item (frame ``index``, ``slot``): stable across runs and device counts."""
        name = _frame_name(self.source, index)
        return OutlierBank.make_key("inpaint", self.seed, name if name is not None else f"#{index}", slot)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, Any]:
        index, slot = self.items[k]
        sample = self.source[index]
        image = _raw_image(sample, index)
        label = sample.get("label")
        label = None if label is None else np.asarray(label, dtype=np.uint8)
        rng = numpy_generator(self.seed, "generate", index, slot)
        entry = self.vocabulary[int(rng.integers(len(self.vocabulary)))]
        placement = self.placement.sample(label, rng, shape=image.shape[:2])
        return {
            "key": self.key(index, slot),
            "index": index,
            "slot": slot,
            "name": str(sample.get("name", f"#{index}")),
            "image": image,
            "label": label,
            "object": entry,
            "box": None if placement is None else (placement.x0, placement.y0, placement.side),
            "seed": derive_seed(self.seed, "generate", index, slot),
        }


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Frames may differ in size and carry Python objects: keep the batch a list.
    return items


class _HostItemsDataModule(L.LightningDataModule):
    """Work items listed in ``setup`` and kept on the host, served in a fixed order."""

    items: Dataset | None
    batch_size: int
    num_workers: int

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        """Keep items on the host: the pipeline moves what it needs to its own device."""
        return batch

    def predict_dataloader(self) -> DataLoader:
        """Items in a fixed order (Lightning adds a distributed sampler under DDP)."""
        assert self.items is not None
        return DataLoader(
            self.items, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers, collate_fn=_collate
        )


class GenerationDataModule(_HostItemsDataModule):
    """Builds the pending work items in ``setup`` (on every rank, before the first predict step)."""

    def __init__(
        self,
        source: Dataset,
        bank_root: str,
        vocabulary: Sequence[VocabularyEntry],
        placement: PlacementSampler,
        seed: int = 0,
        objects_per_frame: int = 1,
        max_frames: int | None = None,
        write: WriteKind = "object",
        batch_size: int = 4,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.source, self.bank_root, self.vocabulary, self.placement = source, bank_root, vocabulary, placement
        self.seed, self.objects_per_frame, self.max_frames, self.write = seed, objects_per_frame, max_frames, write
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.items: WorkItemDataset | None = None

    def setup(self, stage: str) -> None:
        """Scan the bank and list the items still to do (Lightning holds a barrier after setup on all ranks)."""
        done = set(OutlierBank(self.bank_root, mode="a").keys())
        self.items = WorkItemDataset(
            self.source,
            self.vocabulary,
            self.placement,
            self.seed,
            self.objects_per_frame,
            self.max_frames,
            self.write,
            done,
        )
        log.info(
            "generate: %d of %d work items to do (%d already in %s)",
            len(self.items),
            self.items.total,
            self.items.total - len(self.items),
            self.bank_root,
        )


class _PipelineModule(L.LightningModule):
    """A predict-only LightningModule around a lazily loaded diffusers wrapper (``self.worker``)."""

    worker: Any

    def on_predict_start(self) -> None:
        """Load the pipeline on this rank's device (it is not loaded yet)."""
        if self.worker._pipeline is None and self.device.type != "cpu":
            self.worker.device = self.device


class InpaintGenerationModule(_PipelineModule):
    """Inpaints a batch of work items with an :class:`InpaintingEngine`."""

    def __init__(self, engine: InpaintingEngine) -> None:
        super().__init__()
        self.engine = self.worker = engine

    def predict_step(
        self, batch: list[dict[str, Any]], batch_idx: int
    ) -> list[tuple[dict[str, Any], InpaintResult | None]]:
        """Synthesize every placeable item of the batch; returns (item, result or None) pairs."""
        todo = [it for it in batch if it["box"] is not None]
        results = (
            self.engine.synthesize_batch(
                [it["image"] for it in todo],
                [it["box"] for it in todo],
                [it["object"] for it in todo],
                [it["seed"] for it in todo],
                [it["label"] for it in todo],
            )
            if todo
            else []
        )
        by_key = {it["key"]: r for it, r in zip(todo, results)}
        return [(it, by_key.get(it["key"])) for it in batch]


class BankWriter(BasePredictionWriter):
    """Commits accepted results to the outlier bank (objects and/or whole frames) and, optionally, evaluation PNGs.

    ``eval_dir`` receives ``images/<key>.png``, ``labels/<key>_labelTrainIds.png`` (train ids, OOD 254)
    and ``labels/<key>_ood.png`` (0 in, 1 OOD, 255 void) for synthetic evaluation sets.
    """

    def __init__(self, bank_root: str, write: WriteKind = "object", eval_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        if write not in ("object", "frame", "both"):
            raise ValueError(f"write must be 'object', 'frame' or 'both', got {write!r}")
        self.bank_root = bank_root
        self.write = write
        self.eval_dir = Path(eval_dir) if eval_dir else None
        self.counts: dict[str, int] = {"written": 0, "rejected": 0, "failed": 0, "unplaceable": 0}
        self._bank: OutlierBank | None = None

    @property
    def bank(self) -> OutlierBank:
        """The bank, opened for appending."""
        if self._bank is None:
            self._bank = OutlierBank(self.bank_root, mode="a")
        return self._bank

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Write every accepted result of the batch; count the others."""
        for item, result in prediction:
            if result is None:
                self.counts["unplaceable"] += 1
                continue
            if not result.ok:
                self.counts["failed" if result.reason.startswith("inpainting") else "rejected"] += 1
                continue
            result.metadata.update(frame=item["name"], slot=item["slot"])
            base = item["label"]
            for key in _keys_for(item["key"], self.write):
                kind = "frame" if key.endswith("-frame") else "object"
                self.bank.add(result.to_entry(kind, base_label=base), key=key)
            if self.eval_dir is not None:
                label = result.label_map(base)
                atomic_save_png(self.eval_dir / "images" / f"{item['key']}.png", result.image)
                atomic_save_png(self.eval_dir / "labels" / f"{item['key']}_labelTrainIds.png", label)
                atomic_save_png(self.eval_dir / "labels" / f"{item['key']}_ood.png", semantic_to_ood_target(label))
            self.counts["written"] += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log this rank's counts and the engine's."""
        engine = getattr(pl_module, "engine", None)
        log.info("generate (rank %d): %s; engine %s", trainer.global_rank, self.counts, getattr(engine, "stats", {}))


class InpaintedObjectSource:
    """An outlier source (``sample(rng) -> OutlierEntry``) that inpaints one object into a random frame per call.

    For producers outside the predict loop, e.g. ``ProducerSpec("synthrel_lightning.synthesis.generate.InpaintedObjectSource",
    {"source": "<cityscapes root>", "engine": {...engine options...}})`` refreshing a bank during training.
    """

    def __init__(
        self,
        source: Dataset | str,
        engine: InpaintingEngine | dict[str, Any] | None = None,
        vocabulary: str | list[str] | None = None,
        controls: Sequence[str] = (),
        placement: PlacementSampler | None = None,
        split: str = "train",
        max_tries: int = 3,
        device: str | None = None,
    ) -> None:
        if isinstance(source, (str, os.PathLike)):
            from synthrel_lightning.data.cityscapes import CityscapesDataset

            source = CityscapesDataset(source, split=split)
        self.source = source
        if engine is None or isinstance(engine, dict):
            kwargs = dict(engine or {})
            if device is not None:
                kwargs.setdefault("device", device)
            engine = InpaintingEngine(**kwargs)
        self.engine = engine
        self.vocabulary = resolve_vocabulary(vocabulary, controls)
        self.placement = placement if placement is not None else PlacementSampler()
        self.max_tries = int(max_tries)

    def sample(self, rng: np.random.Generator) -> Any:
        """One inpainted object as an OutlierEntry, or None when every try failed (placement, inpainting or mask)."""
        for _ in range(self.max_tries):
            index = int(rng.integers(len(self.source)))
            sample = self.source[index]
            image = np.asarray(sample["image"])
            label = sample.get("label")
            label = None if label is None else np.asarray(label, dtype=np.uint8)
            placement = self.placement.sample(label, rng, shape=image.shape[:2])
            if placement is None:
                continue
            entry = self.vocabulary[int(rng.integers(len(self.vocabulary)))]
            seed = int(rng.integers(2**62))
            result = self.engine.synthesize(image, placement, entry, seed, label=label)
            if result.ok:
                result.metadata.update(frame=str(sample.get("name", index)))
                return result.to_entry("object")
        return None


def generate(
    bank: str,
    source: Dataset,
    engine: InpaintingEngine | None = None,
    vocabulary: str | list[str] | None = None,
    controls: list[str] | None = None,
    objects_per_frame: int = 1,
    max_frames: int | None = None,
    seed: int = 0,
    write: WriteKind = "object",
    eval_dir: str | None = None,
    placement: PlacementSampler | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    limit_predict_batches: int | float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Inpaint objects into ``source`` frames and store them in the outlier bank at ``bank``; returns the counts.

    ``vocabulary``: None/"paper" (the 42 objects), a .txt/.yaml file, or a list of names;
    ``controls``: Cityscapes class names inpainted as in-distribution controls (their train ids);
    ``write``: store object crops, whole synthetic frames (evaluation sets) or both.
    """
    engine = engine if engine is not None else InpaintingEngine()
    vocab = resolve_vocabulary(vocabulary, controls or ())
    placement = placement if placement is not None else PlacementSampler()
    datamodule = GenerationDataModule(
        source, bank, vocab, placement, seed, objects_per_frame, max_frames, write, batch_size, num_workers
    )
    writer = BankWriter(bank, write, eval_dir)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        callbacks=[writer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_predict_batches=limit_predict_batches,
    )
    module = InpaintGenerationModule(engine)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    assert datamodule.items is not None
    summary = dict(
        writer.counts, pending_at_start=len(datamodule.items), total=datamodule.items.total, engine=dict(engine.stats)
    )
    summary["mask"] = dict(engine.masker.stats)
    return summary


# --------------------------------------------------------------------------- domain-shift sets

_CS_IMAGE_SUFFIX = "_leftImg8bit.png"
_CS_LABEL_SUFFIX = "_gtFine_labelIds.png"


def _city_and_stem(dataset: Any, index: int, name: str) -> tuple[str, str]:
    """Cityscapes city folder and file stem of a source frame (its image's folder; else the name's first token)."""
    frames = getattr(dataset, "frames", None)
    image = getattr(frames[index], "image", None) if frames is not None and index < len(frames) else None
    if image is not None:
        path = Path(image)
        stem = path.name[: -len(_CS_IMAGE_SUFFIX)] if path.name.endswith(_CS_IMAGE_SUFFIX) else path.stem
        return path.parent.name or "frames", stem
    return (name.split("_", 1)[0] if "_" in name else "frames"), name


def _source_label_ids(dataset: Any, index: int) -> Path | None:
    """The source frame's official ``*_gtFine_labelIds.png`` if it has one (keeps every Cityscapes label id)."""
    frames = getattr(dataset, "frames", None)
    label = getattr(frames[index], "label", None) if frames is not None and index < len(frames) else None
    return Path(label) if label is not None and str(label).endswith(_CS_LABEL_SUFFIX) else None


def _resize_nearest(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if label.shape[:2] == tuple(hw):
        return label
    from PIL import Image

    return np.asarray(Image.fromarray(label).resize((hw[1], hw[0]), resample=Image.Resampling.NEAREST))


class DomainWorkItems(Dataset):
    """Work items (source frame, domain) of a domain-shift set, minus those whose two files already exist.

    Item ``(i, domain)`` is seeded by ``derive_seed(seed, "domains", domain, frame name)`` and written to
    ``<out>/<domain>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and
    ``<out>/<domain>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``.
    """

    def __init__(
        self,
        source: Dataset,
        out: str | os.PathLike[str],
        domains: Sequence[str],
        split: str = "val",
        resolution: int | None = None,
        seed: int = 0,
        max_frames: int | None = None,
    ) -> None:
        if resolution is not None and (int(resolution) < 8):
            raise ValueError(f"resolution (output long side) must be >= 8 or None (frame size), got {resolution}")
        if not domains:
            raise ValueError("DomainWorkItems needs at least one domain")
        self.source, self.out, self.split = source, Path(out), check_domain_name(split)
        self.domains = [check_domain_name(d) for d in domains]
        self.resolution = None if resolution is None else int(resolution)
        self.seed = int(seed)
        n = len(source) if max_frames is None else min(len(source), int(max_frames))
        all_items = [(i, d) for i in range(n) for d in self.domains]
        self.items = [(i, d) for i, d in all_items if not all(p.is_file() for p in self.paths(i, d))]
        self.total = len(all_items)

    def frame_name(self, index: int) -> str:
        """The stable name of source frame ``index`` (without decoding it when the dataset lists its frames)."""
        name = _frame_name(self.source, index)
        return name if name is not None else str(self.source[index].get("name", f"#{index}"))

    def paths(self, index: int, domain: str) -> tuple[Path, Path]:
        """(image path, label-id path) of item (frame ``index``, ``domain``) in the Cityscapes layout."""
        name = self.frame_name(index)
        city, stem = _city_and_stem(self.source, index, name)
        root = self.out / domain
        return (
            root / "leftImg8bit" / self.split / city / f"{stem}{_CS_IMAGE_SUFFIX}",
            root / "gtFine" / self.split / city / f"{stem}{_CS_LABEL_SUFFIX}",
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, Any]:
        index, domain = self.items[k]
        sample = self.source[index]
        image = _raw_image(sample, index)
        if sample.get("label") is None:
            raise ValueError(
                f"generate (task domains) conditions on label maps, but source item {index} has no 'label'"
            )
        label = np.asarray(sample["label"], dtype=np.uint8)
        name = str(sample.get("name", self.frame_name(index)))
        h, w = label.shape
        th, tw = snap_size(h, w, self.resolution if self.resolution is not None else max(h, w))
        ids_file = _source_label_ids(self.source, index)
        if ids_file is not None:
            from synthrel_lightning.data.io import read_label

            label_ids = read_label(ids_file)
        else:
            label_ids = train_ids_to_label_ids(label, what=f"label of source frame {name!r}")
        image_path, label_path = self.paths(index, domain)
        return {
            "index": index,
            "domain": domain,
            "name": name,
            "image": image,
            # Conditioning (train ids) and ground truth (label ids) at the output size.
            "label": _resize_nearest(label, (th, tw)),
            "label_ids": _resize_nearest(label_ids, (th, tw)),
            "seed": derive_seed(self.seed, "domains", domain, name),
            "image_path": str(image_path),
            "label_path": str(label_path),
        }


class DomainDataModule(_HostItemsDataModule):
    """Lists the pending (frame, domain) items in ``setup`` (on every rank, before the first predict step)."""

    def __init__(
        self,
        source: Dataset,
        out: str,
        domains: Sequence[str],
        split: str = "val",
        resolution: int | None = None,
        seed: int = 0,
        max_frames: int | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.source, self.out, self.domains, self.split = source, out, list(domains), split
        self.resolution, self.seed, self.max_frames = resolution, seed, max_frames
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.items: DomainWorkItems | None = None

    def setup(self, stage: str) -> None:
        """Check which output files exist and list the items still to do."""
        self.items = DomainWorkItems(
            self.source, self.out, self.domains, self.split, self.resolution, self.seed, self.max_frames
        )
        log.info(
            "generate domains: %d of %d items to do (%d already in %s)",
            len(self.items),
            self.items.total,
            self.items.total - len(self.items),
            self.out,
        )


class DomainGenerationModule(_PipelineModule):
    """Renders a batch of (label map, domain) items with a :class:`DomainShiftGenerator`."""

    def __init__(self, generator: DomainShiftGenerator) -> None:
        super().__init__()
        self.generator = self.worker = generator

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[tuple[dict[str, Any], DomainSample]]:
        """Generate every item of the batch; returns (item, sample) pairs."""
        samples = self.generator.generate(
            [it["label"] for it in batch],
            [it["domain"] for it in batch],
            [it["seed"] for it in batch],
            [it["image"] for it in batch],
        )
        return list(zip(batch, samples))


class DomainWriter(BasePredictionWriter):
    """Writes generated frames and their label-id ground truth (atomically) in the Cityscapes layout."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.counts: dict[str, int] = {"written": 0}
        self.per_domain: dict[str, int] = {}

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Write each (frame, ground truth) pair; the image goes last, so a frame counts as done only when both exist."""
        for item, sample in prediction:
            if sample.image.shape[:2] != item["label_ids"].shape:
                raise RuntimeError(
                    f"generated frame {sample.image.shape[:2]} does not match its label map {item['label_ids'].shape} ({item['name']}, {item['domain']})"
                )
            atomic_save_png(Path(item["label_path"]), item["label_ids"])
            atomic_save_png(Path(item["image_path"]), sample.image)
            self.counts["written"] += 1
            self.per_domain[item["domain"]] = self.per_domain.get(item["domain"], 0) + 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log this rank's counts."""
        log.info("generate domains (rank %d): %s per domain %s", trainer.global_rank, self.counts, self.per_domain)


def generate_domains(
    out: str,
    source: Dataset,
    generator: DomainShiftGenerator | None = None,
    split: str | None = None,
    resolution: int | None = None,
    max_frames: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    num_workers: int = 0,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    limit_predict_batches: int | float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Render every ``source`` label map in each of ``generator.domains`` and write ``<out>/<domain>`` as a Cityscapes-layout set.

    ``split``: the output split folder (default: the source's ``split``, else "val");
    ``resolution``: output long side (snapped to a multiple of 8; default the frame size snapped);
    items whose two files exist are skipped, so an interrupted run resumes.
    """
    generator = generator if generator is not None else DomainShiftGenerator()
    split = split if split is not None else str(getattr(source, "split", "val"))
    datamodule = DomainDataModule(
        source, out, generator.domains, split, resolution, seed, max_frames, batch_size, num_workers
    )
    writer = DomainWriter()
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        callbacks=[writer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_predict_batches=limit_predict_batches,
    )
    trainer.predict(DomainGenerationModule(generator), datamodule=datamodule, return_predictions=False)
    assert datamodule.items is not None
    return dict(
        writer.counts,
        per_domain=dict(writer.per_domain),
        pending_at_start=len(datamodule.items),
        total=datamodule.items.total,
        out=str(out),
        split=split,
    )


# ----------------------------------------------------------------------------------- command line

Task = Literal["objects", "domains"]

_SHARED = {
    "source",
    "seed",
    "max_frames",
    "batch_size",
    "num_workers",
    "accelerator",
    "devices",
    "strategy",
    "num_nodes",
    "limit_predict_batches",
    "progress",
}
_OBJECT_ONLY = ("bank", "engine", "vocabulary", "controls", "objects_per_frame", "write", "eval_dir", "placement")
_DOMAIN_ONLY = ("out", "generator", "split", "resolution")


def build_parser() -> Any:
    """The jsonargparse parser of ``generate``: ``task`` plus the options of :func:`generate` and :func:`generate_domains`."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="python -m synthrel_lightning generate",
        description=(
            "task=objects: "
            + (generate.__doc__ or "").split("\n")[0]
            + "  task=domains: "
            + (generate_domains.__doc__ or "").split("\n")[0]
        ),
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the options below")
    parser.add_argument(
        "--task",
        type=Task,
        default="objects",
        help="objects: inpaint objects into an outlier bank; domains: ControlNet domain-shift sets",
    )
    parser.add_function_arguments(generate, as_group=False, skip={"bank"})
    parser.add_argument("--bank", type=str | None, default=None, help="task objects: outlier bank folder (required)")
    parser.add_function_arguments(generate_domains, as_group=False, skip=_SHARED | {"out"})
    parser.add_argument(
        "--out",
        type=str | None,
        default=None,
        help="task domains: output folder, one Cityscapes-layout set per domain (required)",
    )
    return parser


def main(args: list[str] | None = None) -> None:
    """Command line of ``python -m synthrel_lightning generate`` (``--config gen.yaml``, any option overridable)."""
    parser = build_parser()
    cfg = parser.parse_args(args)
    task = cfg.task
    wanted, own, other = (
        ("bank", _OBJECT_ONLY, _DOMAIN_ONLY) if task == "objects" else ("out", _DOMAIN_ONLY, _OBJECT_ONLY)
    )
    defaults = parser.get_defaults()
    foreign = [k for k in other if cfg.get(k) != defaults.get(k)]
    if foreign:
        other_task = "domains" if task == "objects" else "objects"
        parser.error(
            f"option(s) {', '.join(foreign)} belong to task {other_task!r}, but task is {task!r}; remove them or set --task={other_task}"
        )
    if not cfg.get(wanted):
        parser.error(f"task {task!r} needs --{wanted}")
    init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    keep = _SHARED | set(own)
    kwargs = {k: v for k, v in vars(init).items() if k in keep}
    summary = generate(**kwargs) if task == "objects" else generate_domains(**kwargs)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(json.dumps(summary, indent=2, default=str))
