"""``python -m synthrel_lightning generate``: build an outlier bank and synthetic evaluation frames offline.

Domain-shift sets are rendered by ``python -m synthrel_lightning domains``
(:mod:`synthrel_lightning.generators.domain_generation`).

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
from synthrel_lightning.synthesis.engine import InpaintingEngine, InpaintResult
from synthrel_lightning.synthesis.placement import PlacementSampler
from synthrel_lightning.synthesis.vocabulary import VocabularyEntry, resolve_vocabulary

__all__ = [
    "InpaintedObjectSource",
    "WorkItemDataset",
    "GenerationDataModule",
    "InpaintGenerationModule",
    "BankWriter",
    "generate",
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


# ----------------------------------------------------------------------------------- command line


def build_parser() -> Any:
    """The jsonargparse parser of ``generate``: the options of :func:`generate`."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="python -m synthrel_lightning generate", description=(generate.__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the options below")
    parser.add_argument("--task", type=str, default="objects", help="objects (domain-shift sets: the domains command)")
    parser.add_function_arguments(generate, as_group=False)
    return parser


def main(args: list[str] | None = None) -> None:
    """Command line of ``python -m synthrel_lightning generate`` (``--config gen.yaml``, any option overridable)."""
    parser = build_parser()
    cfg = parser.parse_args(args)
    if cfg.task != "objects":
        parser.error(
            f"task {cfg.task!r}: generate builds outlier banks only (task objects); domain-shift sets are rendered by "
            "python -m synthrel_lightning domains --config recipes/generate_domains.yaml"
        )
    init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    summary = generate(**{k: v for k, v in vars(init).items() if k not in ("config", "task")})
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(json.dumps(summary, indent=2, default=str))
