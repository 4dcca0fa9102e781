"""Streaming semantic-segmentation IoU from a dataset-level confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from synthrel_lightning.labels import NUM_CLASSES, TRAIN_ID_NAMES, VOID_ID
from synthrel_lightning.metrics._checks import check_finite
from synthrel_lightning.metrics.functional import iou_per_class, mean_iou

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _key(name: str) -> str:
    return "iou_" + name.strip().lower().replace(" ", "_").replace("-", "_")


class SegmentationIoU(Metric):
    """Per-class IoU and mIoU over the whole dataset (confusion-matrix based).

    ``update(preds_or_logits, target)``: either logits ``(B, K, H, W)`` (argmax is
    taken) or predicted ids ``(B, H, W)``; target ``(B, H, W)`` train ids. Pixels
    whose target is ``ignore_index``, 254 (OOD) or any id outside ``[0, K)`` are
    ignored. ``compute()`` returns ``miou`` and ``iou_<class name>`` (spaces ->
    underscores). A class absent from both predictions and targets has IoU NaN.
    ``miou_classes="present"`` (default) averages over the classes that occur in the
    targets or predictions; ``"all"`` over all K classes, an absent one counting as 0
    (see :func:`synthrel_lightning.metrics.functional.mean_iou`).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confmat: Tensor

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_index: int = VOID_ID,
        class_names: Sequence[str] | None = TRAIN_ID_NAMES,
        miou_classes: Literal["present", "all"] = "present",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if miou_classes not in ("present", "all"):
            raise ValueError(f"SegmentationIoU: miou_classes must be 'present' or 'all', got {miou_classes!r}")
        self.miou_classes = miou_classes
        if num_classes < 2:
            raise ValueError(f"SegmentationIoU: num_classes must be >= 2, got {num_classes}")
        if class_names is None or len(class_names) != num_classes:
            if class_names is not None and class_names is not TRAIN_ID_NAMES:
                raise ValueError(
                    f"SegmentationIoU: class_names has {len(class_names)} names for num_classes={num_classes}"
                )
            class_names = [str(i) for i in range(num_classes)]
        keys = [_key(n) for n in class_names]
        if len(set(keys)) != len(keys):
            raise ValueError(f"SegmentationIoU: class_names give duplicate keys: {keys}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = list(class_names)
        self._keys = keys
        self.add_state(
            "confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.int64), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: logits ``(B, K, H, W)`` or predicted ids ``(B, H, W)``, and target ids ``(B, H, W)``."""
        k = self.num_classes
        who = type(self).__name__
        if target.is_floating_point():
            raise ValueError(f"{who}: target must hold integer train ids, got {target.dtype}")
        if preds.is_floating_point():
            if preds.ndim != target.ndim + 1 or preds.shape[1] != k:
                raise ValueError(
                    f"{who}: float preds are taken as logits (B, {k}, H, W); got {tuple(preds.shape)} "
                    f"for target {tuple(target.shape)}"
                )
            if preds.shape[2:] != target.shape[1:] or preds.shape[0] != target.shape[0]:
                raise ValueError(
                    f"{who}: logits shape {tuple(preds.shape)} does not match target shape {tuple(target.shape)}"
                )
            target = target.to(preds.device).long()
            valid = (target >= 0) & (target < k) & (target != self.ignore_index)
            # argmax would silently turn NaN logits into a class
            check_finite(preds, valid, who, "logits", channel_dim=1, hint="check the model's output")
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(
                f"{who}: preds shape {tuple(preds.shape)} does not match target shape {tuple(target.shape)}"
            )
        target = target.to(preds.device).long()
        preds = preds.long()
        valid = (target >= 0) & (target < k) & (target != self.ignore_index)
        bad_pred = valid & ((preds < 0) | (preds >= k))
        if bool(bad_pred.any()):
            raise ValueError(f"{who}: predicted ids {torch.unique(preds[bad_pred]).tolist()[:10]} outside 0..{k - 1}")
        # invalid pixels go to one extra slot instead of being masked out
        idx = torch.where(valid, target * k + preds, k * k)
        self.confmat += torch.bincount(idx.flatten(), minlength=k * k + 1)[: k * k].view(k, k)

    def compute(self) -> dict[str, Tensor]:
        """``miou`` and ``iou_<name>`` per class (NaN for classes absent from predictions and targets)."""
        iou = iou_per_class(self.confmat)
        out = {"miou": mean_iou(self.confmat, self.miou_classes)}
        out.update({key: iou[i] for i, key in enumerate(self._keys)})
        return out

    def plot(self, ax: Axes | None = None, title: str | None = None) -> tuple[Figure, Axes]:
        """Per-class IoU bars and the mIoU line (all processes' pixels, collective under DDP), as ``(figure, axes)``."""
        from synthrel_lightning.metrics.plots import iou_bars

        with self.sync_context(should_sync=self._to_sync, should_unsync=self._should_unsync):
            confmat = self.confmat.detach().clone().cpu()
        return iou_bars(
            iou_per_class(confmat), self.class_names, float(mean_iou(confmat, self.miou_classes)), title=title, ax=ax
        )
