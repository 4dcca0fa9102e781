"""The set-level QC summary: per-reference faithfulness (per frame and pooled, per class) and object presence."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from synthrel_lightning.qc.table import QCTable

__all__ = ["summarise"]


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _stats(values: list[Any]) -> dict[str, float]:
    vals = _finite(values)
    if not vals:
        return {"mean": float("nan"), "median": float("nan"), "p10": float("nan"), "min": float("nan")}
    arr = np.asarray(vals, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "p10": float(np.quantile(arr, 0.1)),
        "min": float(arr.min()),
    }


def _ranked(table: QCTable, names: Sequence[str], column: str, count: int) -> dict[str, list[list[Any]]]:
    scored = [(n, table.get(n, column)) for n in names]
    scored = [(n, float(v)) for n, v in scored if v is not None and not math.isnan(float(v))]
    scored.sort(key=lambda t: (t[1], t[0]))
    return {"worst": [list(t) for t in scored[:count]], "best": [list(t) for t in scored[::-1][:count]]}


def _reference(table: QCTable, ref: str, names: Sequence[str], count: int) -> dict[str, Any]:
    done = [n for n in names if table.scored(n, ref)]
    classes = table.classes(ref)
    per_class: dict[str, Any] = {}
    total_tp = total_px = 0
    ious = []
    for cls in classes:
        tp = sum(table.get(n, f"{ref}.tp.{cls}") or 0 for n in done)
        fp = sum(table.get(n, f"{ref}.fp.{cls}") or 0 for n in done)
        fn = sum(table.get(n, f"{ref}.fn.{cls}") or 0 for n in done)
        frame_iou = []
        having = 0
        for n in done:
            t, p, f = (table.get(n, f"{ref}.{k}.{cls}") or 0 for k in ("tp", "fp", "fn"))
            if t + p + f:
                frame_iou.append(t / (t + p + f))
            having += int(t + f > 0)
        iou = tp / (tp + fp + fn) if tp + fp + fn else float("nan")
        if tp + fp + fn:
            ious.append(iou)
        per_class[cls] = {
            "iou": iou,
            "acc": tp / (tp + fn) if tp + fn else float("nan"),
            "label_px": int(tp + fn),
            "frames": having,
            "mean_frame_iou": float(np.mean(frame_iou)) if frame_iou else float("nan"),
        }
        total_tp += tp
        total_px += tp + fn
    return {
        "frames_scored": len(done),
        "pixel_acc": _stats([table.get(n, f"{ref}.pixel_acc") for n in done]),
        "miou": _stats([table.get(n, f"{ref}.miou") for n in done]),
        "pooled_pixel_acc": total_tp / total_px if total_px else float("nan"),
        "pooled_miou": float(np.mean(ious)) if ious else float("nan"),
        "per_class": per_class,
        "frames_by_miou": _ranked(table, done, f"{ref}.miou", count),
    }


def _objects(table: QCTable, names: Sequence[str], count: int) -> dict[str, Any]:
    checked = [n for n in names if table.get(n, "object.status") == "checked"]
    with_ood = [n for n in names if (table.get(n, "ood_px") or 0) > 0]
    per_object: dict[str, Any] = {}
    for n in checked:
        entry = per_object.setdefault(table.get(n, "object.name"), {"frames": 0, "iou": []})
        entry["frames"] += 1
        entry["iou"].append(table.get(n, "object.iou"))
    for entry in per_object.values():
        vals = _finite(entry.pop("iou"))
        entry["mean_iou"] = float(np.mean(vals)) if vals else float("nan")
        entry["found_fraction"] = sum(1 for v in vals if v > 0) / len(vals) if vals else float("nan")
    ious = [table.get(n, "object.iou") for n in checked]
    return {
        "frames_with_ood": len(with_ood),
        "checked": len(checked),
        "iou": _stats(ious),
        "found_fraction": sum(1 for v in _finite(ious) if v > 0) / len(checked) if checked else float("nan"),
        "per_object": dict(sorted(per_object.items())),
        "frames_by_iou": _ranked(table, checked, "object.iou", count),
    }


def summarise(table: QCTable, names: Sequence[str], count: int = 5) -> dict[str, Any]:
    """Set-level figures over the frames ``names``: per reference, mean/median/p10/min of the per-frame
    pixel accuracy and mIoU, the pooled pixel accuracy and per-class IoU/accuracy (counts summed over
    frames), the ``count`` worst and best frames; object presence (IoU statistics, per object name)."""
    out: dict[str, Any] = {
        "frames": len(names),
        "references": {r: _reference(table, r, names, count) for r in table.references},
    }
    if table.has_objects:
        out["objects"] = _objects(table, names, count)
    return out
