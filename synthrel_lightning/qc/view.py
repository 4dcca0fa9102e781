"""Filtered views of a set: the frames whose QC scores pass thresholds (nothing is deleted), and what they keep."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from synthrel_lightning.qc.table import QCTable, load_qc_table, qc_command, set_label
from synthrel_lightning.qc.thresholds import QCFilter, QCThresholds

__all__ = ["filtered_indices", "filter_report", "frame_failures", "apply_qc_filter"]

log = logging.getLogger(__name__)


def _coerce(thresholds: QCThresholds | Mapping[str, Any] | str | None) -> QCThresholds:
    if isinstance(thresholds, QCThresholds):
        return thresholds
    if isinstance(thresholds, Mapping) and "qc_dir" in thresholds:
        return QCFilter.parse(thresholds)
    return QCThresholds.parse(thresholds)


def _references(table: QCTable, thresholds: QCThresholds, where: str) -> list[str]:
    if not thresholds.needs_references:
        return []
    refs = table.references
    if thresholds.reference is not None:
        if thresholds.reference not in refs:
            raise ValueError(
                f"{where}: QC reference {thresholds.reference!r} is not in the table {table.path} "
                f"(references there: {refs or 'none'})"
            )
        return [thresholds.reference]
    if not refs:
        raise ValueError(
            f"{where}: thresholds {thresholds.describe()} read reference-segmenter scores but the table "
            f"{table.path} has none; rerun qc with --references"
        )
    return refs


def _below(value: Any, threshold: float) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or float(value) < threshold


def frame_failures(table: QCTable, name: str, thresholds: QCThresholds, references: Sequence[str]) -> list[str]:
    """The criteria frame ``name`` fails (``"<ref>.miou"``, ``"<ref>.pixel_acc"``, ``"object.iou"``); [] = kept."""
    failed: list[str] = []
    for ref in references:
        if thresholds.min_miou is not None and _below(table.get(name, f"{ref}.miou"), thresholds.min_miou):
            failed.append(f"{ref}.miou")
        if thresholds.min_pixel_acc is not None and _below(
            table.get(name, f"{ref}.pixel_acc"), thresholds.min_pixel_acc
        ):
            failed.append(f"{ref}.pixel_acc")
    if thresholds.min_object_iou is not None and (table.get(name, "ood_px") or 0) > 0:
        if _below(table.get(name, "object.iou"), thresholds.min_object_iou):
            failed.append("object.iou")
    return failed


def _check_complete(table: QCTable, names: Sequence[str], thresholds: QCThresholds, refs: list[str], where: str,
                    how: str) -> None:  # fmt: skip
    missing = [n for n in names if n not in table.rows]
    unscored = [n for n in names if n in table.rows and not all(table.scored(n, r) for r in refs)]
    if thresholds.min_object_iou is not None:
        if not table.has_objects:
            raise ValueError(
                f"{where}: min_object_iou is set but the table {table.path} has no object-presence columns; "
                f"rerun qc with an object-mask model (--masker): {how}"
            )
        unscored += [n for n in names if n in table.rows and not table.object_checked(n) and n not in unscored]
    if missing or unscored:
        bad = (missing + unscored)[:3]
        raise ValueError(
            f"{where}: the QC table {table.path} is incomplete: {len(missing)} frame(s) have no row and "
            f"{len(unscored)} lack the scores the thresholds read (e.g. {bad}); complete it with: {how}"
        )


def _resolve(source: Any, thresholds: QCThresholds, table: QCTable | None) -> tuple[list[str], QCTable, str, str]:
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        if table is None:
            raise ValueError("filtered_indices: pass the table when the source is a list of frame names")
        return [str(n) for n in source], table, f"QC table {table.path}", "python -m synthrel_lightning qc ..."
    names = [f.name for f in source.frames] if hasattr(source, "frames") else list(source.names)
    qc_dir = getattr(thresholds, "qc_dir", None)
    table = table if table is not None else load_qc_table(source, qc_dir)
    return names, table, set_label(source), qc_command(source, qc_dir)


def filtered_indices(
    source: Any,
    thresholds: QCThresholds | Mapping[str, Any] | str | None,
    table: QCTable | None = None,
) -> list[int]:
    """Indices of the frames of ``source`` that pass ``thresholds``, in order.

    ``source``: a dataset (its frames, its QC table read from ``thresholds.qc_dir`` or the set's
    default folder unless ``table`` is given) or a sequence of frame names (``table`` required).
    Every frame must have its row and the scores the thresholds read; a missing table raises
    :class:`~synthrel_lightning.qc.table.MissingQCTable` naming the command that makes it.
    """
    th = _coerce(thresholds)
    names, table, where, how = _resolve(source, th, table)
    refs = _references(table, th, where)
    _check_complete(table, names, th, refs, where, how)
    return [i for i, n in enumerate(names) if not frame_failures(table, n, th, refs)]


def filter_report(
    source: Any,
    thresholds: QCThresholds | Mapping[str, Any] | str | None,
    table: QCTable | None = None,
) -> dict[str, Any]:
    """What a filtered view keeps: frames and kept fraction of the set, per class and per object name.

    Per class (when the table has a reference): ``frames`` holding the class in their label map,
    ``kept_frames``, ``kept_frame_fraction`` and ``kept_pixel_fraction`` (the class's labelled
    pixels in kept frames over all its labelled pixels). ``failed``: frames failing each criterion.
    """
    th = _coerce(thresholds)
    names, table, where, how = _resolve(source, th, table)
    refs = _references(table, th, where)
    _check_complete(table, names, th, refs, where, how)
    failures = {n: frame_failures(table, n, th, refs) for n in names}
    kept = [n for n in names if not failures[n]]
    report: dict[str, Any] = {
        "set": where,
        "table": str(table.path),
        "thresholds": th.as_dict(),
        "frames": len(names),
        "kept": len(kept),
        "kept_fraction": len(kept) / len(names) if names else float("nan"),
        "failed": {},
        "per_class": {},
        "per_object": {},
    }
    for n in names:
        for crit in failures[n]:
            report["failed"][crit] = report["failed"].get(crit, 0) + 1
    counting = next((r for r in table.references if all(table.scored(n, r) for n in names)), None)
    if counting is not None:
        keep = set(kept)
        for cls in table.classes(counting):
            px = {n: (table.get(n, f"{counting}.tp.{cls}") or 0) + (table.get(n, f"{counting}.fn.{cls}") or 0)
                  for n in names}  # fmt: skip
            having = [n for n in names if px[n] > 0]
            total = sum(px.values())
            kept_px = sum(px[n] for n in having if n in keep)
            kept_frames = sum(1 for n in having if n in keep)
            report["per_class"][cls] = {
                "frames": len(having),
                "kept_frames": kept_frames,
                "kept_frame_fraction": kept_frames / len(having) if having else float("nan"),
                "kept_pixel_fraction": kept_px / total if total else float("nan"),
            }
    if table.has_objects:
        for n in names:
            obj = table.get(n, "object.name")
            if obj is None or table.get(n, "object.status") != "checked":
                continue
            entry = report["per_object"].setdefault(obj, {"frames": 0, "kept_frames": 0})
            entry["frames"] += 1
            entry["kept_frames"] += int(not failures[n])
        for entry in report["per_object"].values():
            entry["kept_frame_fraction"] = entry["kept_frames"] / entry["frames"]
    return report


def apply_qc_filter(dataset: Any, frames: list[Any], qc_filter: QCFilter | Mapping[str, Any] | str) -> list[Any]:
    """The frames of ``dataset`` (its ``frames`` list, before ``max_samples``) that ``qc_filter`` keeps.

    Called by :class:`~synthrel_lightning.data.base.SegmentationDataset` for its ``qc_filter`` argument;
    stores the :func:`filter_report` as ``dataset.qc_report`` and logs the kept fraction.
    """
    flt = qc_filter if isinstance(qc_filter, QCFilter) else QCFilter.parse(qc_filter)
    names = [f.name for f in frames]
    table = load_qc_table(dataset, flt.qc_dir)
    report = filter_report(names, flt, table)
    report["set"] = set_label(dataset)
    keep = set(filtered_indices(names, flt, table))
    dataset.qc_report = report
    if not keep:
        raise ValueError(
            f"{set_label(dataset)}: the QC filter {flt.describe()} keeps none of its {len(names)} frames "
            f"(failed criteria: {report['failed']}); lower the thresholds"
        )
    log.info(
        "%s: QC filter %s keeps %d of %d frames (%.1f%%)",
        set_label(dataset), flt.describe(), len(keep), len(names), 100.0 * len(keep) / len(names),
    )  # fmt: skip
    return [f for i, f in enumerate(frames) if i in keep]
