"""Sharing evaluation sets, domain sets and outlier banks as Hugging Face ``datasets`` Parquet datasets.

- :func:`export_frames`: an evaluation or domain set (any dataset of raw samples) to a folder of Parquet
  shards with a dataset card (and the set's QC table when it has one);
- :func:`export_bank`: an :class:`~synthrel_lightning.synthesis.OutlierBank` likewise;
- :func:`push_to_hub`: upload such a folder to a Hub dataset repository;
- :class:`HubFramesDataset`: a shared frame set (folder or Hub id) as a named evaluation set;
- :class:`HubBankSource` / :func:`import_bank`: a shared bank as an outlier source, or into a local bank.

Pixels, labels, names and metadata round-trip exactly (lossless PNG cells). Needs the ``hub`` extra
(``datasets``, ``huggingface_hub``). Guide: docs/guides/sharing.md; command:
``python -m synthrel_lightning share_set``.
"""

from __future__ import annotations

from synthrel_lightning._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "export_frames": ".export",
    "export_bank": ".export",
    "push_to_hub": ".hub",
    "check_shared_folder": ".hub",
    "HubFramesDataset": ".frames",
    "HubBankSource": ".bank",
    "import_bank": ".bank",
    "read_entries": ".bank",
    "resolve_source": ".source",
    "read_qc_table": ".qc_join",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
