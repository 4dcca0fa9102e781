"""Domain-shift evaluation sets as a Lightning predict loop: work items, their DataModule, the module, the writer.

Each (source frame, domain) item renders the frame's label map with a
:class:`~synthrel_lightning.generators.domains.DomainShiftGenerator` and writes it as
``<out>/<domain>`` in the Cityscapes layout (``CityscapesDataset(root=<out>/<domain>)``
reads it). GenVal's protocol is the default: a centred square crop of each val label map
resized to 512x512 with NEAREST; ``crop="full"`` renders the whole frame instead.

Joint shift sets (``sets="joint"`` or ``"both"``) put OOD objects in the shifted frame: an
object mask from an outlier source is pasted into the label map before rendering, its
pixels conditioned as ``ood_condition_id`` (Cityscapes "unlabeled" by default, so the
ControlNet draws no Cityscapes class there) and named in the prompt; the ground truth marks
them OOD (254). They are written as ``<out>/<domain>-ood`` in the layout of
:class:`~synthrel_lightning.data.synthetic.SyntheticFramesDataset` (``images/<key>.png``,
``labels/<key>_labelTrainIds.png``, ``labels/<key>_ood.png``, and ``labels/<key>_object.json``
naming the pasted object, which ``qc`` re-detects).

Items are seeded from (seed, kind, domain, frame name), so the output does not depend on
the number of devices, and items whose files exist are skipped (resume).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
from torch.utils.data import Dataset

from synthrel_lightning.atomic import atomic_save_png, atomic_write_json
from synthrel_lightning.generators.captions import GENERIC_CAPTION, CaptionFile, MissingCaptions
from synthrel_lightning.generators.domains import (
    DomainSample,
    DomainShiftGenerator,
    check_domain_name,
    train_ids_to_label_ids,
)
from synthrel_lightning.labels import LABEL_IDS, OOD_ID, label_ids_to_train_ids, semantic_to_ood_target
from synthrel_lightning.predict_loop import BatchPredictionWriter, HostItemsDataModule, predict_trainer
from synthrel_lightning.qc.presence import object_sidecar
from synthrel_lightning.seeding import derive_seed, numpy_generator
from synthrel_lightning.synthesis.generate import frame_name
from synthrel_lightning.synthesis.names import path_within
from synthrel_lightning.synthesis.placement import PlacementSampler
from synthrel_lightning.synthesis.protocol import snap_size
from synthrel_lightning.synthesis.sources import OutlierSource

__all__ = [
    "Crop",
    "SetKind",
    "DomainWorkItems",
    "DomainDataModule",
    "DomainGenerationModule",
    "DomainWriter",
    "generate_domains",
]

log = logging.getLogger(__name__)

Crop = Literal["square", "full"]
SetKind = Literal["shift", "joint", "both"]

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


def _resize(array: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    if array.shape[:2] == tuple(hw):
        return array
    from PIL import Image

    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(array).resize((hw[1], hw[0]), resample=resample))


def _square(array: np.ndarray) -> np.ndarray:
    """The centred square of side min(H, W)."""
    h, w = array.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return array[y : y + s, x : x + s]


class DomainWorkItems(Dataset):
    """Work items (source frame, domain, kind) of domain-shift sets, minus those whose files already exist.

    ``kind`` "shift" is written to ``<out>/<domain>/leftImg8bit|gtFine/<split>/<city>/<stem>_*.png``;
    "joint" (a shifted frame with pasted OOD objects) to ``<out>/<domain>-ood/images|labels/<stem>*.png``.
    """

    def __init__(
        self,
        source: Dataset,
        out: str | os.PathLike[str],
        domains: Sequence[str],
        split: str = "val",
        crop: Crop = "square",
        resolution: int | None = 512,
        seed: int = 0,
        max_frames: int | None = None,
        captions: dict[str, str] | None = None,
        sets: SetKind = "shift",
        ood_objects: OutlierSource | None = None,
        placement: PlacementSampler | None = None,
        ood_condition_id: int = 0,
    ) -> None:
        if resolution is not None and int(resolution) < 8:
            raise ValueError(f"resolution must be >= 8 or None (the frame size), got {resolution}")
        if crop not in ("square", "full"):
            raise ValueError(f"crop must be 'square' (GenVal's 512x512) or 'full', got {crop!r}")
        if sets not in ("shift", "joint", "both"):
            raise ValueError(f"sets must be 'shift', 'joint' or 'both', got {sets!r}")
        if sets != "shift" and ood_objects is None:
            raise ValueError(f"sets={sets!r} pastes OOD objects: pass ood_objects (an outlier source)")
        if int(ood_condition_id) not in LABEL_IDS:
            raise ValueError(f"ood_condition_id must be a Cityscapes label id (0..33), got {ood_condition_id}")
        if not domains:
            raise ValueError("DomainWorkItems needs at least one domain")
        self.source, self.out, self.split = source, Path(out), check_domain_name(split)
        self.domains = [check_domain_name(d) for d in domains]
        self.crop, self.resolution, self.seed = crop, None if resolution is None else int(resolution), int(seed)
        self.captions = captions or {}
        self.ood_objects = ood_objects
        self.placement = (
            placement if placement is not None else PlacementSampler(size_range=(64, 160), reference_width=512)
        )
        self.ood_condition_id = int(ood_condition_id)
        kinds = {"shift": ["shift"], "joint": ["joint"], "both": ["shift", "joint"]}[sets]
        n = len(source) if max_frames is None else min(len(source), int(max_frames))
        all_items = [(i, d, k) for i in range(n) for d in self.domains for k in kinds]
        self.items = [it for it in all_items if not all(p.is_file() for p in self.paths(*it))]
        self.total = len(all_items)

    def frame_name(self, index: int) -> str:
        """The stable name of source frame ``index`` (without decoding it when the dataset lists its frames)."""
        name = frame_name(self.source, index)
        return name if name is not None else str(self.source[index].get("name", f"#{index}"))

    def paths(self, index: int, domain: str, kind: str = "shift") -> tuple[Path, ...]:
        """The files of item (frame ``index``, ``domain``, ``kind``); the image is first."""
        name = self.frame_name(index)
        city, stem = _city_and_stem(self.source, index, name)
        # Every part built from a name (domain, split, city, stem) is checked, so a frame named
        # "../x" or "/abs/x" cannot move a write outside the output folder.
        what = f"frame {name!r}"
        if kind == "joint":
            return (
                path_within(self.out, f"{domain}-ood", "images", f"{stem}.png", what=what),
                path_within(self.out, f"{domain}-ood", "labels", f"{stem}_labelTrainIds.png", what=what),
                path_within(self.out, f"{domain}-ood", "labels", f"{stem}_ood.png", what=what),
            )
        return (
            path_within(self.out, domain, "leftImg8bit", self.split, city, f"{stem}{_CS_IMAGE_SUFFIX}", what=what),
            path_within(self.out, domain, "gtFine", self.split, city, f"{stem}{_CS_LABEL_SUFFIX}", what=what),
        )

    def _geometry(self, array: np.ndarray, nearest: bool) -> np.ndarray:
        if self.crop == "square":
            array = _square(array)
            side = self.resolution if self.resolution is not None else array.shape[0]
            return _resize(array, (side, side), nearest)
        h, w = array.shape[:2]
        return _resize(array, snap_size(h, w, self.resolution if self.resolution is not None else max(h, w)), nearest)

    def _paste_objects(self, label_ids: np.ndarray, train_ids: np.ndarray, domain: str, name: str) -> tuple[str, int]:
        """Paste one OOD object mask into both maps (in place); returns its name and the pixels it covers."""
        rng = numpy_generator(self.seed, "joint", domain, name)
        for _ in range(8):
            entry = self.ood_objects.sample(rng)
            place = self.placement.sample(train_ids, rng)
            if entry is None or place is None:
                continue
            mask = _resize(
                (np.asarray(entry.alpha, dtype=np.float32) > 0.5).astype(np.uint8), (place.side, place.side), True
            )
            ys, xs = slice(place.y0, place.y0 + place.side), slice(place.x0, place.x0 + place.side)
            region = mask[: train_ids[ys, xs].shape[0], : train_ids[ys, xs].shape[1]].astype(bool)
            if not region.any():
                continue
            label_ids[ys, xs][region] = self.ood_condition_id
            train_ids[ys, xs][region] = OOD_ID
            return (entry.name or "object").replace("_", " "), int(region.sum())
        raise RuntimeError(f"could not place an OOD object in frame {name!r} ({domain}) after 8 tries")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, Any]:
        index, domain, kind = self.items[k]
        sample = self.source[index]
        if sample.get("label") is None:
            raise ValueError(f"domain generation conditions on label maps, but source item {index} has no 'label'")
        name = str(sample.get("name", self.frame_name(index)))
        ids_file = _source_label_ids(self.source, index)
        if ids_file is not None:
            from synthrel_lightning.data.io import read_label

            label_ids = read_label(ids_file)
        else:
            label_ids = train_ids_to_label_ids(np.asarray(sample["label"]), what=f"label of source frame {name!r}")
        label_ids = np.array(self._geometry(label_ids, nearest=True))
        train_ids = label_ids_to_train_ids(label_ids).copy()
        obj = None
        if kind == "joint":
            obj, _ = self._paste_objects(label_ids, train_ids, domain, name)
        return {
            "index": index,
            "domain": domain,
            "kind": kind,
            "name": name,
            "label_ids": label_ids,
            "label": train_ids,
            "caption": self.captions.get(name),
            "object": obj,
            "seed": derive_seed(self.seed, "domains", kind, domain, name),
            "paths": [str(p) for p in self.paths(index, domain, kind)],
        }


class DomainDataModule(HostItemsDataModule):
    """Lists the pending items in ``setup`` (on every rank) with their captions from the caption file."""

    def __init__(
        self,
        source: Dataset,
        out: str,
        domains: Sequence[str],
        split: str = "val",
        crop: Crop = "square",
        resolution: int | None = 512,
        seed: int = 0,
        max_frames: int | None = None,
        captions: str | None = None,
        on_missing_caption: MissingCaptions = "error",
        generic_caption: str | None = None,
        sets: SetKind = "shift",
        ood_objects: OutlierSource | None = None,
        ood_condition_id: int = 0,
        batch_size: int = 4,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.source, self.out, self.domains, self.split = source, out, list(domains), split
        self.crop, self.resolution, self.seed, self.max_frames = crop, resolution, seed, max_frames
        self.captions, self.on_missing_caption, self.generic_caption = captions, on_missing_caption, generic_caption
        self.sets, self.ood_objects, self.ood_condition_id = sets, ood_objects, ood_condition_id
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.items: DomainWorkItems | None = None
        self.missing_captions: list[str] = []

    def _captions(self) -> dict[str, str]:
        if self.captions is None:
            return {}
        n = len(self.source) if self.max_frames is None else min(len(self.source), int(self.max_frames))
        names = [frame_name(self.source, i) or str(self.source[i].get("name", f"#{i}")) for i in range(n)]
        kwargs = {} if self.generic_caption is None else {"generic": self.generic_caption}
        by_name, self.missing_captions = CaptionFile.read(self.captions).lookup(
            names, self.on_missing_caption, **kwargs
        )
        return by_name

    def setup(self, stage: str) -> None:
        """Read the captions, check which output files exist and list the items still to do."""
        self.items = DomainWorkItems(
            self.source,
            self.out,
            self.domains,
            self.split,
            self.crop,
            self.resolution,
            self.seed,
            self.max_frames,
            self._captions(),
            self.sets,
            self.ood_objects,
            ood_condition_id=self.ood_condition_id,
        )
        self.log_pending("domains", self.out)


class DomainGenerationModule(L.LightningModule):
    """Renders a batch of items with a :class:`DomainShiftGenerator` (joint items name their object in the prompt)."""

    def __init__(self, generator: DomainShiftGenerator, joint_caption: str = "{caption}, with a {object}") -> None:
        super().__init__()
        self.generator = generator
        self.joint_caption = joint_caption

    def on_predict_start(self) -> None:
        """Render on this rank's device (Lightning chose it; the pipeline loads there on first use)."""
        if self.device.type != "cpu":
            self.generator.to(self.device)

    def _caption(self, item: dict[str, Any]) -> str | None:
        if item["kind"] != "joint":
            return item["caption"]
        base = item["caption"] if item["caption"] is not None else self.generator.caption
        base = base if base is not None else GENERIC_CAPTION
        return self.joint_caption.replace("{caption}", base).replace("{object}", item["object"])

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[tuple[dict[str, Any], DomainSample]]:
        """Generate every item of the batch from its label ids; returns (item, sample) pairs."""
        samples = self.generator.generate(
            [it["label_ids"] for it in batch],
            [it["domain"] for it in batch],
            [it["seed"] for it in batch],
            [self._caption(it) for it in batch],
            ids="label_ids",
        )
        return list(zip(batch, samples))


class DomainWriter(BatchPredictionWriter):
    """Writes generated frames and their ground truth atomically; the image goes last (it marks the item done)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {"written": 0, "joint": 0}
        self.per_domain: dict[str, int] = {}

    def write_batch(self, prediction: Any, batch_idx: int) -> None:
        """Write each (frame, ground truth) pair."""
        for item, sample in prediction:
            if sample.image.shape[:2] != item["label_ids"].shape:
                raise RuntimeError(
                    f"generated frame {sample.image.shape[:2]} does not match its label map "
                    f"{item['label_ids'].shape} ({item['name']}, {item['domain']})"
                )
            image_path, *label_paths = (Path(p) for p in item["paths"])
            if item["kind"] == "joint":
                # The pasted object's name beside the label: QC re-detects the object by it.
                atomic_write_json(object_sidecar(label_paths[0]), {"object": item["object"], "ood": True})
                atomic_save_png(label_paths[0], item["label"])
                atomic_save_png(label_paths[1], semantic_to_ood_target(item["label"]))
                self.counts["joint"] += 1
            else:
                atomic_save_png(label_paths[0], item["label_ids"])
            atomic_save_png(image_path, sample.image)
            self.counts["written"] += 1
            key = item["domain"] if item["kind"] == "shift" else f"{item['domain']}-ood"
            self.per_domain[key] = self.per_domain.get(key, 0) + 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log this rank's counts."""
        log.info("domains (rank %d): %s per set %s", trainer.global_rank, self.counts, self.per_domain)


def generate_domains(
    out: str,
    source: Dataset,
    generator: DomainShiftGenerator | None = None,
    captions: str | None = None,
    on_missing_caption: MissingCaptions = "error",
    split: str | None = None,
    crop: Crop = "square",
    resolution: int | None = 512,
    sets: SetKind = "shift",
    ood_objects: OutlierSource | None = None,
    ood_condition_id: int = 0,
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
    """Render every ``source`` label map in each of ``generator.domains``; write ``<out>/<domain>`` (Cityscapes layout).

    ``captions``: a JSONL caption file (frames matched by name); a frame missing from it is an
    error unless ``on_missing_caption="generic"`` (then the generator's caption is used, and
    counted). ``crop``/``resolution``: "square" = centred square resized to ``resolution``
    (GenVal: 512), "full" = the whole frame at long side ``resolution``. ``sets``: "shift",
    "joint" (with OOD objects from ``ood_objects``, written to ``<out>/<domain>-ood``) or "both".
    Items whose files exist are skipped, so an interrupted run resumes.
    """
    generator = generator if generator is not None else DomainShiftGenerator()
    split = split if split is not None else str(getattr(source, "split", "val"))
    root = getattr(source, "root", None)
    if root is not None and Path(out).resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"domains: out {out!r} lies inside the source dataset {str(root)!r}; write elsewhere")
    datamodule = DomainDataModule(
        source, out, generator.domains, split, crop, resolution, seed, max_frames, captions, on_missing_caption,
        generator.caption, sets, ood_objects, ood_condition_id, batch_size, num_workers,
    )  # fmt: skip
    writer = DomainWriter()
    trainer = predict_trainer(accelerator, devices, strategy, num_nodes, [writer], progress, limit_predict_batches)
    trainer.predict(DomainGenerationModule(generator), datamodule=datamodule, return_predictions=False)
    assert datamodule.items is not None
    return dict(
        writer.counts,
        per_domain=dict(writer.per_domain),
        pending_at_start=len(datamodule.items),
        total=datamodule.items.total,
        missing_captions=len(datamodule.missing_captions),
        encoding=generator.encoding.name if writer.counts["written"] else generator.requested_encoding,
        out=str(out),
        split=split,
    )
