"""Synthetic-set quality control: label faithfulness, object presence, per-frame tables, filtered views.

A synthetic frame takes its label map as ground truth (domain and joint sets: the conditioning map;
inpainted sets: the source label with the object's mask as OOD). QC measures how far that holds,
per frame, and lets a user choose a filtered view of the set by thresholds, never deleting frames.
Guide: docs/guides/qc.md. Command: ``python -m synthrel_lightning qc``.

Public API (stable)::

    run_qc(dataset, references=None, masker=None, qc_dir=None, object_names=None, transform=None,
           device="auto", context=1.0, flush_every=16, trust_checkpoint=False) -> QCResult
        Score every frame of ``dataset`` into ``<qc_dir>/frames.csv`` + ``summary.json`` (resumable).
        QCResult: .qc_dir (Path), .table (QCTable), .summary (dict), .computed ({ref|"objects": n}), .report().

    QCThresholds(min_miou=None, min_pixel_acc=None, min_object_iou=None, reference=None)
        Which frames a view keeps; QCThresholds.parse("min_miou=0.5,min_object_iou=0.3").
    QCFilter(min_miou=None, min_pixel_acc=None, min_object_iou=None, reference=None, qc_dir=None)
        Thresholds plus the table's folder: the ``qc_filter`` argument of every dataset class.

    load_qc_table(where, qc_dir=None) -> QCTable
        ``where``: a QC folder, a frames.csv path, or a dataset (its ``qc_dir`` or default folder).
        Raises MissingQCTable (a FileNotFoundError) naming the set and the command that makes the table.
    filtered_indices(source, thresholds, table=None) -> list[int]
        Indices of ``source``'s frames (a dataset, or frame names with ``table``) that pass.
    filter_report(source, thresholds, table=None) -> dict
        Kept frames and fraction of the set, per class (frames and labelled pixels) and per object name.

    default_qc_dir(dataset_or_root) -> Path      ``<set folder>.qc`` beside the set folder.
    qc_command(dataset, qc_dir=None) -> str      the command line that writes a set's table.
    ReferenceSegmenter(name, model, class_names=None), build_references(specs), ObjectNames(source)

A dataset reads its filtered view by name through its ``qc_filter`` argument (YAML:
``qc_filter: {min_miou: 0.5}``); its ``qc_report`` then holds :func:`filter_report`'s result.

This package computes the table (:mod:`~synthrel_lightning.qc.run`, references, faithfulness,
object presence). The table's format, the thresholds and the filtered views live below it, in
:mod:`synthrel_lightning.data` (``qc_table``, ``qc_thresholds``, ``qc_view``), since every dataset
reads its view; the object-name file beside a frame's label is :mod:`synthrel_lightning.synthesis.sidecar`.
"""

from __future__ import annotations

from synthrel_lightning._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "run_qc": "synthrel_lightning.qc.run",
    "QCResult": "synthrel_lightning.qc.run",
    "QCThresholds": "synthrel_lightning.data.qc_thresholds",
    "QCFilter": "synthrel_lightning.data.qc_thresholds",
    "QCTable": "synthrel_lightning.data.qc_table",
    "MissingQCTable": "synthrel_lightning.data.qc_table",
    "load_qc_table": "synthrel_lightning.data.qc_table",
    "default_qc_dir": "synthrel_lightning.data.qc_table",
    "qc_command": "synthrel_lightning.data.qc_table",
    "FRAMES_FILE": "synthrel_lightning.data.qc_table",
    "SUMMARY_FILE": "synthrel_lightning.data.qc_table",
    "filtered_indices": "synthrel_lightning.data.qc_view",
    "filter_report": "synthrel_lightning.data.qc_view",
    "apply_qc_filter": "synthrel_lightning.data.qc_view",
    "ReferenceSegmenter": "synthrel_lightning.qc.references",
    "build_references": "synthrel_lightning.qc.references",
    "ObjectNames": "synthrel_lightning.qc.presence",
    "OBJECT_SUFFIX": "synthrel_lightning.synthesis.sidecar",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
