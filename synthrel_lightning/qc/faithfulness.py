"""Label faithfulness of one frame: a reference segmenter's prediction against the frame's label map.

The label map of a generated frame is its conditioning map (domain and joint sets) or the
source frame's label with the pasted object (inpainted sets). Per frame we compare the
prediction with it on the labelled pixels (not void 255, not OOD 254: no reference predicts
OOD) and keep the per-class counts, so per-class and pooled figures follow exactly:

* pixel accuracy = Σ_k TP_k / N (N labelled pixels);
* mIoU = mean over the classes present in the label or the prediction of TP_k / (TP_k + FP_k + FN_k)
  (:func:`~synthrel_lightning.metrics.functional.mean_iou`, ``classes="present"``);
* per-class accuracy = TP_k / (TP_k + FN_k).

MultiShiftSeg (Gao et al., NeurIPS 2024) discards generated frames whose prediction by a
pretrained segmenter disagrees with the label map; these per-frame scores let a user choose
that threshold (:class:`~synthrel_lightning.qc.thresholds.QCThresholds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from synthrel_lightning.metrics.functional import mean_iou
from synthrel_lightning.qc.table import class_key

__all__ = ["frame_counts", "frame_columns"]


def frame_counts(prediction: Any, label: Any, num_classes: int) -> np.ndarray:
    """The (K, K) confusion matrix (rows = label, columns = prediction) over labelled pixels (label < K)."""
    pred = torch.as_tensor(np.asarray(prediction)).reshape(-1).long()
    lab = torch.as_tensor(np.asarray(label)).reshape(-1).long()
    if pred.shape != lab.shape:
        raise ValueError(f"prediction ({pred.numel()} px) and label ({lab.numel()} px) differ in size")
    valid = (lab >= 0) & (lab < num_classes)
    index = lab[valid] * num_classes + pred[valid].clamp(0, num_classes - 1)
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes).numpy()


def frame_columns(reference: str, confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """The table columns of one reference on one frame (``<ref>.n_px``, ``.pixel_acc``, ``.miou``, counts)."""
    cm = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(cm)
    n = int(cm.sum())
    columns: dict[str, Any] = {
        f"{reference}.n_px": n,
        f"{reference}.pixel_acc": float(tp.sum() / n) if n else float("nan"),
        f"{reference}.miou": float(mean_iou(torch.from_numpy(cm), "present")) if n else float("nan"),
    }
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    for kind, counts in (("tp", tp), ("fp", fp), ("fn", fn)):
        for name, value in zip(class_names, counts):
            columns[f"{reference}.{kind}.{class_key(name)}"] = int(value)
    return columns
