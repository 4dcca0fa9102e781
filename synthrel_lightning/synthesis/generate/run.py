"""``generate``: the Lightning predict loop that inpaints objects into frames and fills an outlier bank."""

from __future__ import annotations

import logging

from torch.utils.data import Dataset

from synthrel_lightning.predict_loop import lost_peers_message, peers_lost_as, predict_trainer
from synthrel_lightning.synthesis.bank import OutlierBank
from synthrel_lightning.synthesis.engine import InpaintingEngine
from synthrel_lightning.synthesis.generate.datamodule import GenerationDataModule
from synthrel_lightning.synthesis.generate.items import WriteKind
from synthrel_lightning.synthesis.generate.module import InpaintGenerationModule
from synthrel_lightning.synthesis.generate.progress import GenerationProgress
from synthrel_lightning.synthesis.generate.stop import StopSignals
from synthrel_lightning.synthesis.generate.summary import GenerationSummary, gather
from synthrel_lightning.synthesis.generate.writer import BankWriter, GenerationStopped
from synthrel_lightning.synthesis.placement import PlacementSampler
from synthrel_lightning.synthesis.vocabulary import resolve_vocabulary

__all__ = ["generate"]

log = logging.getLogger(__name__)


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
    max_item_retries: int = 2,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    limit_predict_batches: int | float | None = None,
    progress: bool = True,
    process_group_timeout_s: float = 600.0,
) -> GenerationSummary:
    """Inpaint objects into ``source`` frames and store them in the outlier bank at ``bank``; returns the summary.

    ``source``: a dataset of raw samples (uint8 image, train-id label, name), e.g. a CityscapesDataset;
    ``vocabulary``: None/"paper" (the 42 objects), a .txt/.yaml file, or a list of names;
    ``controls``: Cityscapes class names inpainted as in-distribution controls (their train ids);
    ``write``: store object crops, whole synthetic frames (evaluation sets) or both;
    ``eval_dir``: also write each frame as PNGs of an evaluation set;
    ``max_item_retries``: tries of an item alone after its batch raised, before it counts as failed;
    ``process_group_timeout_s``: on several processes, how long one waits for the others (at start-up and
    for the final counts) before it fails.
    SIGTERM/SIGINT stop the run after the current batch; a rerun resumes, redoing any item with a
    missing output. When a process of a multi-process run is lost, the others end with
    :class:`~synthrel_lightning.predict_loop.ProcessGroupLost` naming what they wrote; a rerun resumes.
    """
    engine = engine if engine is not None else InpaintingEngine()
    vocab = resolve_vocabulary(vocabulary, controls or ())
    placement = placement if placement is not None else PlacementSampler()
    datamodule = GenerationDataModule(
        source, bank, vocab, placement, seed, objects_per_frame, max_frames, write, eval_dir, batch_size, num_workers
    )
    stop = StopSignals()
    writer = BankWriter(bank, write, eval_dir, should_stop=stop)
    bar = GenerationProgress(writer, enabled=progress)
    trainer = predict_trainer(
        accelerator, devices, strategy, num_nodes, [writer, bar], progress=False,
        limit_predict_batches=limit_predict_batches, process_group_timeout_s=process_group_timeout_s,
    )  # fmt: skip
    lost = lost_peers_message("generate", trainer, lambda: writer.counts, process_group_timeout_s)
    with stop:
        try:
            with peers_lost_as(lost):
                trainer.predict(
                    InpaintGenerationModule(engine, max_item_retries), datamodule=datamodule, return_predictions=False
                )
        except GenerationStopped:
            log.warning("generate: stopped by %s; the items written so far are complete", stop.received)
        finally:
            bar.close()
    items = datamodule.items
    total = items.total if items is not None else 0
    local = {
        "counts": dict(writer.counts),
        "failed_items": list(writer.failed_items),
        "engine": dict(engine.stats),
        "mask": dict(engine.masker.stats),
    }
    with peers_lost_as(lost):
        merged = gather(local)
    counts = merged["counts"]
    return GenerationSummary(
        bank=str(bank),
        eval_dir=None if eval_dir is None else str(eval_dir),
        total=total,
        skipped=total - (len(items) if items is not None else 0),
        done=counts["done"],
        failed=counts["failed"],
        rejected=counts["rejected"],
        unplaceable=counts["unplaceable"],
        failed_items=merged["failed_items"],
        interrupted=stop.received,
        temp_files_removed=datamodule.temp_files_removed,
        bank_entries=len(OutlierBank(bank, mode="a")),
        engine=merged["engine"],
        mask=merged["mask"],
    )
