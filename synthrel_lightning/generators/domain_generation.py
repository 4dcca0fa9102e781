"""Domain-shift evaluation sets as a Lightning predict loop: the DataModule, the module, the writer, the entry point.

:func:`generate_domains` renders the work items of :mod:`~synthrel_lightning.generators.domain_items`
(GenVal's sampling protocol by default, Loiseau et al., ECCV 2024, https://github.com/valeoai/GenVal)
with a :class:`~synthrel_lightning.generators.domains.DomainShiftGenerator` and writes each set as
``<out>/<domain>`` in the Cityscapes layout (``CityscapesDataset(root=<out>/<domain>)`` reads it), joint
sets with pasted OOD objects as ``<out>/<domain>-ood``. Items whose files exist are skipped (resume).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import Dataset

from synthrel_lightning.atomic import atomic_save_png, atomic_write_json
from synthrel_lightning.generators.captions import GENERIC_CAPTION, CaptionFile, MissingCaptions
from synthrel_lightning.generators.domain_items import (
    GENVAL_NUM_SAMPLES,
    PROTOCOLS,
    Crop,
    DomainWorkItems,
    Protocol,
    SetKind,
    check_protocol,
)
from synthrel_lightning.generators.domains import GENVAL_PROMPT_TEMPLATE, DomainSample, DomainShiftGenerator
from synthrel_lightning.labels import semantic_to_ood_target
from synthrel_lightning.predict_loop import (
    BatchPredictionWriter,
    HostItemsDataModule,
    lost_peers_message,
    peers_lost_as,
    predict_trainer,
)
from synthrel_lightning.synthesis.generate import frame_name
from synthrel_lightning.synthesis.sidecar import object_sidecar
from synthrel_lightning.synthesis.sources import OutlierSource

__all__ = [
    "PROTOCOLS",
    "Crop",
    "Protocol",
    "SetKind",
    "DomainWorkItems",
    "DomainDataModule",
    "DomainGenerationModule",
    "DomainWriter",
    "generate_domains",
]

log = logging.getLogger(__name__)


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
        protocol: Protocol = "genval",
        num_samples: int = GENVAL_NUM_SAMPLES,
    ) -> None:
        super().__init__()
        self.protocol, self.num_samples = check_protocol(protocol), int(num_samples)
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
        # torch's Dataset declares no __len__; the map-style sets rendered here have one
        n = len(self.source) if self.max_frames is None else min(len(self.source), int(self.max_frames))  # type: ignore[arg-type]
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
            protocol=self.protocol,
            num_samples=self.num_samples,
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
    protocol: Protocol = "genval",
    num_samples: int = GENVAL_NUM_SAMPLES,
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
    process_group_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Render ``source`` label maps in each of ``generator.domains``; write ``<out>/<domain>`` (Cityscapes layout).

    ``protocol``: ``"genval"`` (GenVal's: ``num_samples`` = 512 seeded draws per domain with
    replacement, random square crops, 512x512, prompt ``"<caption>, in <domain>, "``; the
    generator's ``prompt_template`` must be GenVal's) or ``"deterministic_center"`` (ours: every
    frame once, ``crop`` "square" = centred square resized to ``resolution``, "full" = the whole
    frame at long side ``resolution``). ``captions``: a JSONL caption file (frames matched by
    name); a frame missing from it is an error unless ``on_missing_caption="generic"`` (then the
    generator's caption is used, and counted). ``sets``: "shift",
    "joint" (with OOD objects from ``ood_objects``, written to ``<out>/<domain>-ood``) or "both".
    Items whose files exist are skipped, so an interrupted run resumes. ``process_group_timeout_s``:
    on several processes, how long one waits for the others before it fails with
    :class:`~synthrel_lightning.predict_loop.ProcessGroupLost`, naming what it wrote.
    """
    generator = generator if generator is not None else DomainShiftGenerator()
    check_protocol(protocol)
    if protocol == "genval" and generator.prompt_template != GENVAL_PROMPT_TEMPLATE:
        raise ValueError(
            f"domains: protocol 'genval' uses GenVal's prompt {GENVAL_PROMPT_TEMPLATE!r}, but the generator's "
            f"prompt_template is {generator.prompt_template!r}; set it to GenVal's or use protocol "
            "'deterministic_center'"
        )
    split = split if split is not None else str(getattr(source, "split", "val"))
    root = getattr(source, "root", None)
    if root is not None and Path(out).resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"domains: out {out!r} lies inside the source dataset {str(root)!r}; write elsewhere")
    datamodule = DomainDataModule(
        source, out, generator.domains, split, crop, resolution, seed, max_frames, captions, on_missing_caption,
        generator.caption, sets, ood_objects, ood_condition_id, batch_size, num_workers, protocol, num_samples,
    )  # fmt: skip
    writer = DomainWriter()
    trainer = predict_trainer(
        accelerator, devices, strategy, num_nodes, [writer], progress, limit_predict_batches, process_group_timeout_s
    )
    with peers_lost_as(lost_peers_message("domains", trainer, lambda: writer.counts, process_group_timeout_s)):
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
        protocol=protocol,
    )
