"""``run_qc``: score every frame of a synthetic set (label faithfulness, object presence) into its QC table.

The table is written beside the set (see :mod:`synthrel_lightning.qc.table`), atomically every
``flush_every`` frames and at the end, so a killed run loses at most those frames; a rerun
scores only what is missing: (frame, reference) pairs without scores and frames whose object
was not checked. A reference whose weights changed (another fingerprint) or an object-mask
model configured differently has its columns recomputed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.labels import OOD_ID, TRAIN_ID_NAMES
from synthrel_lightning.qc.faithfulness import frame_columns, frame_counts
from synthrel_lightning.qc.presence import ObjectNames, check_masker, object_columns
from synthrel_lightning.qc.references import ReferenceSegmenter, build_references, check_classes
from synthrel_lightning.qc.summary import summarise
from synthrel_lightning.qc.table import (
    FRAMES_FILE,
    OBJECT_PREFIX,
    SUMMARY_FILE,
    QCTable,
    check_qc_dir,
    qc_command,
    set_label,
)

__all__ = ["QCResult", "run_qc", "masker_description"]

log = logging.getLogger(__name__)


@dataclass
class QCResult:
    """What :func:`run_qc` did: the QC folder, its table and summary, and what this run computed."""

    qc_dir: Path
    table: QCTable
    summary: dict[str, Any]
    computed: dict[str, int] = field(default_factory=dict)

    def report(self) -> str:
        """A few readable lines: where the files are, per-reference means, object presence."""
        s = self.summary
        lines = [f"qc: {s['set']}: {s['frames']} frames; table {self.qc_dir / FRAMES_FILE}"]
        lines.append(f"  computed now: {self.computed}")
        for name, ref in s["references"].items():
            lines.append(
                f"  {name}: pixel acc mean {ref['pixel_acc']['mean']:.3f} (p10 {ref['pixel_acc']['p10']:.3f}), "
                f"mIoU mean {ref['miou']['mean']:.3f} (p10 {ref['miou']['p10']:.3f}), pooled mIoU "
                f"{ref['pooled_miou']:.3f}"
            )
        obj = s.get("objects")
        if obj is not None:
            lines.append(
                f"  objects: {obj['checked']} of {obj['frames_with_ood']} frames with OOD checked, mean IoU "
                f"{obj['iou']['mean']:.3f}, found in {obj['found_fraction']:.1%}"
            )
        return "\n".join(lines)


def masker_description(masker: Any, context: float) -> dict[str, Any]:
    """The object-mask model's class and simple settings (a change invalidates the object columns)."""
    if masker is None:
        return {}
    settings = {
        k: v for k, v in sorted(vars(masker).items())
        if not k.startswith("_") and k != "stats" and isinstance(v, (str, int, float, bool, type(None)))
    }  # fmt: skip
    rules = getattr(masker, "rules", None)
    return {
        "class": f"{type(masker).__module__}.{type(masker).__qualname__}",
        "settings": settings,
        "rules": repr(rules) if rules is not None else None,
        "context": float(context),
    }


def _raw(dataset: Any, index: int) -> dict[str, Any]:
    load = getattr(dataset, "load_raw", None)
    sample = load(index) if callable(load) else dataset[index]
    image = np.asarray(sample["image"])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"QC reads raw frames (uint8 (H, W, 3)); {set_label(dataset)} item {index} has image "
            f"{image.dtype} {image.shape}: do not set a transform on the dataset"
        )
    return sample


def _frame_names(dataset: Any) -> tuple[list[str], list[Any]]:
    frames = getattr(dataset, "frames", None)
    if frames is not None:
        names = [str(f.name) for f in frames]
        labels = [getattr(f, "label", None) for f in frames]
    else:
        names = list(getattr(dataset, "names", [str(i) for i in range(len(dataset))]))
        labels = [None] * len(names)
    if len(set(names)) != len(names):
        raise ValueError(f"QC: {set_label(dataset)} has repeated frame names; the table is keyed by frame name")
    return names, labels


def _load_state(qc_dir: Path) -> dict[str, Any]:
    path = qc_dir / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        log.warning("qc: %s is unreadable; its table's fingerprints are taken as unknown", path)
        return {}


def _invalidate(table: QCTable, state: dict[str, Any], refs: Sequence[ReferenceSegmenter], masker_desc: dict) -> None:
    known = state.get("fingerprints", {})
    for ref in refs:
        if ref.name in table.references and known.get(ref.name) not in (None, ref.fingerprint):
            n = table.drop_columns(f"{ref.name}.")
            log.warning("qc: reference %r changed (new weights); its %d columns are recomputed", ref.name, n)
    if masker_desc and table.has_objects and state.get("masker") not in (None, masker_desc):
        table.drop_columns(OBJECT_PREFIX)
        log.warning("qc: the object-mask model changed; object presence is recomputed")


def run_qc(
    dataset: Any,
    references: Sequence[Any] | Mapping[str, torch.nn.Module] | None = None,
    masker: Any = None,
    qc_dir: str | Path | None = None,
    object_names: str | Path | Mapping[str, str] | None = None,
    transform: Any = None,
    device: str = "auto",
    context: float = 1.0,
    flush_every: int = 16,
    trust_checkpoint: bool = False,
) -> QCResult:
    """Score every frame of ``dataset`` into the QC table in ``qc_dir`` (default ``<set folder>.qc``).

    Args:
        dataset: a set of raw frames with label maps in train ids (254 OOD, 255 void), e.g.
            :class:`~synthrel_lightning.data.SyntheticFramesDataset` (inpainted or joint sets) or
            :class:`~synthrel_lightning.data.CityscapesDataset` (domain sets); no transform set.
        references: reference segmenters (zoo entries, ``(name, module)`` pairs, ``{name: module}``);
            their classes must be the set's (``dataset.class_names``, default the 19 Cityscapes classes).
        masker: the object-mask model that re-detects each frame's OOD object
            (:class:`~synthrel_lightning.synthesis.object_masks.OpenVocabMasker`); None skips object presence.
        qc_dir: the QC output folder (never inside the set's folder).
        object_names: where object names come from when a frame has no ``labels/<key>_object.json``:
            a JSON file ``{frame name: object}``, an outlier bank folder or a mapping.
        transform: the references' input transform (default ``eval_transform()``: ImageNet normalisation,
            native size); the label goes through it too, so prediction and label stay aligned.
        device: where the references run ("auto", "cpu", "cuda", "cuda:1", ...).
        context: crop side around the labelled object for re-detection, in object sides (1.0: its square).
        flush_every: frames between atomic table writes.
        trust_checkpoint: allow zoo checkpoints holding pickled objects (only for files you trust).
    """
    where = set_label(dataset)
    if not getattr(dataset, "has_semantics", True):
        raise ValueError(f"QC: {where} has no semantic labels to compare a generated frame with")
    if int(flush_every) < 1:
        raise ValueError(f"QC: flush_every must be >= 1, got {flush_every!r}")
    out = check_qc_dir(qc_dir, dataset)
    refs = build_references(references, trust_checkpoint=trust_checkpoint)
    set_classes = list(getattr(dataset, "class_names", None) or TRAIN_ID_NAMES)
    for ref in refs:
        check_classes(ref, set_classes, where)
    if masker is not None:
        check_masker(masker)
    if not refs and masker is None:
        raise ValueError("QC: nothing to score: pass reference segmenters (references) and/or an object-mask model")
    names_of = ObjectNames(object_names)
    if transform is None:
        from synthrel_lightning.data.transforms import eval_transform

        transform = eval_transform()
    from synthrel_lightning.devices import resolve_device

    dev = resolve_device(device, who="qc")
    for ref in refs:
        ref.to(dev)

    names, label_paths = _frame_names(dataset)
    table_path = out / FRAMES_FILE
    table = QCTable.read(table_path) if table_path.is_file() else QCTable(table_path)
    state = _load_state(out)
    masker_desc = masker_description(masker, context)
    _invalidate(table, state, refs, masker_desc)
    fingerprints = dict(state.get("fingerprints", {}))
    fingerprints.update({r.name: r.fingerprint for r in refs})
    computed = {r.name: 0 for r in refs}
    computed["objects"] = 0
    started = time.time()

    def flush(complete: bool) -> dict[str, Any]:
        table.save()
        summary = {
            "set": where,
            "dataset": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
            "root": str(getattr(dataset, "root", "")),
            "qc_dir": str(out),
            "command": qc_command(dataset, qc_dir),
            "complete": complete,
            "classes": set_classes,
            "fingerprints": fingerprints,
            "masker": masker_desc if masker is not None else state.get("masker"),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **summarise(table, names),
        }
        atomic_write_json(out / SUMMARY_FILE, summary)
        return summary

    pending = 0
    for index, name in enumerate(names):
        todo = [r for r in refs if not table.scored(name, r.name)]
        check_object = masker is not None and not table.object_checked(name)
        if not todo and not check_object and table.get(name, "ood_px") is not None:
            continue
        sample = _raw(dataset, index)
        label = np.asarray(sample["label"])
        values: dict[str, Any] = {"ood_px": int(np.count_nonzero(label == OOD_ID))}
        if todo:
            moved = transform({**sample, "label": label})
            image = torch.as_tensor(moved["image"]).unsqueeze(0).to(dev)
            target = np.asarray(moved["label"])
            for ref in todo:
                prediction = ref.predict(image)[0].cpu().numpy()
                if ref.num_classes != len(set_classes):
                    check_classes(ref, set_classes, where)
                values.update(frame_columns(ref.name, frame_counts(prediction, target, len(set_classes)), set_classes))
                computed[ref.name] += 1
        if check_object:
            if values["ood_px"] == 0:
                values.update({"object.status": "no_ood", "object.name": None, "object.iou": None,
                               "object.label_px": 0, "object.detected_px": None})  # fmt: skip
            else:
                obj = names_of(name, label_paths[index])
                if obj is None:
                    if pending:
                        flush(False)
                    raise ValueError(
                        f"QC: frame {name!r} of {where} has OOD pixels but no object name: no "
                        f"labels/{name}_object.json beside its label and no object_names source knows it; pass "
                        "object_names (a JSON file {frame: object} or the outlier bank the set was generated with)"
                    )
                values.update(object_columns(masker, np.asarray(sample["image"]), label == OOD_ID, obj, context))
            computed["objects"] += 1
        table.update(name, values)
        pending += 1
        if pending >= int(flush_every):
            flush(False)
            pending = 0
    summary = flush(True)
    log.info("qc: %s scored in %.1f s (computed %s)", where, time.time() - started, computed)
    return QCResult(out, table, summary, computed)
