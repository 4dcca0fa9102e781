"""Generating outlier banks and synthetic evaluation frames ahead of time, as a Lightning predict loop.

Work items (frame, slot) are sharded over ranks by Lightning's distributed sampler
(:mod:`.items`, :mod:`.datamodule`); :class:`InpaintGenerationModule` runs the
:class:`~synthrel_lightning.synthesis.engine.InpaintingEngine` on a batch of them
(:mod:`.module`); :class:`BankWriter` commits results to an
:class:`~synthrel_lightning.synthesis.bank.OutlierBank` and the evaluation PNGs
(:mod:`.writer`); :func:`generate` wires them together (:mod:`.run`) with a progress bar
(:mod:`.progress`), a clean stop on SIGTERM/SIGINT (:mod:`.stop`) and a summary gathered
over all processes (:mod:`.summary`). Every item has a deterministic key, object, box and
seed derived from (seed, frame, slot), so the output does not depend on the number of
devices and a rerun redoes only the items with a missing output (resume).
"""

from __future__ import annotations

from synthrel_lightning.synthesis.generate.datamodule import (
    GenerationDataModule,
    HostItemsDataModule,
    remove_stale_temp_files,
)
from synthrel_lightning.synthesis.generate.items import WorkItem, WorkItemDataset, WriteKind, bank_keys, frame_name
from synthrel_lightning.synthesis.generate.module import InpaintGenerationModule, ItemOutcome
from synthrel_lightning.synthesis.generate.progress import GenerationProgress
from synthrel_lightning.synthesis.generate.run import generate
from synthrel_lightning.synthesis.generate.stop import StopSignals
from synthrel_lightning.synthesis.generate.summary import GenerationSummary, gather
from synthrel_lightning.synthesis.generate.writer import BankWriter, GenerationStopped, eval_paths

__all__ = [
    "BankWriter",
    "GenerationDataModule",
    "GenerationProgress",
    "GenerationStopped",
    "GenerationSummary",
    "HostItemsDataModule",
    "InpaintGenerationModule",
    "ItemOutcome",
    "StopSignals",
    "WorkItem",
    "WorkItemDataset",
    "WriteKind",
    "bank_keys",
    "eval_paths",
    "frame_name",
    "gather",
    "generate",
    "remove_stale_temp_files",
]
