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

from synthrel_lightning._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "GenerationDataModule": "datamodule",
    "HostItemsDataModule": "datamodule",
    "remove_stale_temp_files": "datamodule",
    "WorkItem": "items",
    "WorkItemDataset": "items",
    "WriteKind": "items",
    "bank_keys": "items",
    "frame_name": "items",
    "InpaintGenerationModule": "module",
    "ItemOutcome": "module",
    "GenerationProgress": "progress",
    "generate": "run",
    "StopSignals": "stop",
    "GenerationSummary": "summary",
    "gather": "summary",
    "BankWriter": "writer",
    "GenerationStopped": "writer",
    "eval_paths": "writer",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, {name: f".{module}" for name, module in _LAZY.items()})
