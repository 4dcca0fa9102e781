"""The ``qc`` stage: score every synthetic set with :func:`~synthrel_lightning.qc.run_qc`, choose the filtered
views, and draw a contact sheet of each set's best and worst frames.

Configuration (the study's ``qc`` section)::

    qc:
      sets:                 # set name (as the datamodule names it) -> its raw dataset (no transform)
        synthetic_fog: {class_path: synthrel_lightning.data.SyntheticFramesDataset, init_args: {root: ...}}
      references: [segformer_b5]      # zoo entry names (or entry mappings) predicting on each frame
      masker: null                    # class_path/init_args of the object-mask model (object presence)
      thresholds: {min_miou: 0.5, min_object_iou: 0.3}
      contact_sheet: 3                # best and worst frames shown per set

Writes ``<output>/qc/filters.json`` (per set: the kept frame names, the filter report) read by
the evaluate stage to add ``<set>@qc`` views, ``<output>/qc/summaries.json`` and
``<output>/qc/contact_<set>.png``. The per-frame tables stay where ``run_qc`` writes them
(beside each set). One set failing is reported and the others go on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.correlation.pairs import slug
from synthrel_lightning.correlation.zoo import ZooEntry
from synthrel_lightning.study.context import StudyContext, build_component
from synthrel_lightning.study.views import frame_names

__all__ = ["contact_sheet", "qc_stage"]

log = logging.getLogger(__name__)


def _references(ctx: StudyContext, specs: list[Any]) -> list[Any]:
    from synthrel_lightning.qc import build_references

    by_name = {e.name: e for e in ctx.zoo}
    entries = []
    for spec in specs:
        if isinstance(spec, str):
            if spec not in by_name:
                raise ValueError(f"study: qc: reference {spec!r} is not a zoo entry ({sorted(by_name)})")
            entries.append(by_name[spec])
        else:
            entries.append(ZooEntry(**dict(spec)))
    return build_references(entries)


def _ranked(table: Any, names: list[str], column: str) -> list[tuple[str, float]]:
    scored = []
    for n in names:
        v = table.get(n, column)
        if isinstance(v, (int, float)) and math.isfinite(v):
            scored.append((n, float(v)))
    return sorted(scored, key=lambda t: (t[1], t[0]))


def contact_sheet(dataset: Any, reference: Any, frames: list[tuple[str, float, str]], path: Path) -> Path:
    """A figure: per frame (name, score, kind) its generated image, label overlay and reference prediction."""
    import torch
    from matplotlib.figure import Figure

    from synthrel_lightning.data.transforms import eval_transform
    from synthrel_lightning.figures import save_figure
    from synthrel_lightning.labels import colorize_train_ids

    names = frame_names(dataset) or []
    transform = eval_transform()
    fig = Figure(figsize=(9, 1.9 * len(frames)), constrained_layout=True)
    axes = fig.subplots(len(frames), 3, squeeze=False)
    for row, (name, score, kind) in enumerate(frames):
        sample = dataset.load_raw(names.index(name))
        image, label = np.asarray(sample["image"]), np.asarray(sample["label"])
        with torch.no_grad():
            x = transform({"image": image, "label": label})["image"]
            pred = reference.predict(torch.as_tensor(x)[None])[0].cpu().numpy()
        overlay = (0.5 * image + 0.5 * colorize_train_ids(label)).astype(np.uint8)
        for ax, img, title in zip(
            axes[row],
            (image, overlay, colorize_train_ids(pred.astype(np.uint8))),
            (f"{kind}: {name}", f"label (mIoU {score:.2f})", f"{reference.name} prediction"),
        ):
            ax.imshow(img)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    return save_figure(fig, path, formats=("png",))[0]


def qc_stage(ctx: StudyContext) -> dict[str, Any]:
    """Run QC on each configured set; write the filters, summaries and contact sheets."""
    section = dict(ctx.qc or {})
    if not section.get("sets"):
        return {"skipped": "no qc section (or no sets) in the study configuration"}
    from torch.utils.data import Dataset

    from synthrel_lightning.qc import QCThresholds, filter_report, filtered_indices, run_qc

    out = ctx.stage_dir("qc")
    refs = _references(ctx, list(section.get("references") or []))
    masker = None
    if section.get("masker"):
        spec = dict(section["masker"])
        from synthrel_lightning.study.records import import_class as _import

        masker = _import(spec["class_path"])(**dict(spec.get("init_args") or {}))
    thresholds = QCThresholds(**dict(section.get("thresholds") or {}))
    shown = int(section.get("contact_sheet", 3))
    filters: dict[str, Any] = {}
    summaries: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for set_name, spec in dict(section["sets"]).items():
        try:
            dataset = build_component(dict(spec), Dataset, f"qc set {set_name}")
            result = run_qc(
                dataset,
                references=refs,
                masker=masker,
                qc_dir=section.get("qc_dir") and Path(section["qc_dir"]) / slug(set_name),
            )
            names = frame_names(dataset) or []
            kept = [names[i] for i in filtered_indices(dataset, thresholds, result.table)]
            report = filter_report(dataset, thresholds, result.table)
            filters[set_name] = {
                "kept": kept,
                "frames": len(names),
                "kept_fraction": len(kept) / max(1, len(names)),
                "report": report,
            }
            summaries[set_name] = {**result.summary, "qc_dir": str(result.qc_dir), "computed": result.computed}
            if refs and shown > 0:
                ranked = _ranked(result.table, names, f"{refs[0].name}.miou")
                picks = [(n, s, "worst") for n, s in ranked[:shown]] + [
                    (n, s, "best") for n, s in ranked[-shown:][::-1]
                ]
                sheet = contact_sheet(dataset, refs[0], picks, out / f"contact_{slug(set_name)}.png")
                summaries[set_name]["contact_sheet"] = str(sheet)
        except Exception as e:  # one set failing leaves the others' tables
            failed[set_name] = f"{type(e).__name__}: {e}"
            log.error("study: qc: %s failed: %s", set_name, failed[set_name])
    atomic_write_json(out / "filters.json", filters)
    atomic_write_json(out / "summaries.json", summaries)
    return {
        "sets": sorted(filters),
        "kept_fraction": {k: v["kept_fraction"] for k, v in filters.items()},
        "thresholds": thresholds.as_dict(),
        "failed": failed,
    }
