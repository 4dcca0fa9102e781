"""SegmentationIoU against a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthrel_lightning.labels import TRAIN_ID_NAMES
from synthrel_lightning.metrics import SegmentationIoU


def test_iou_matches_direct_and_ignores_void_ood() -> None:
    g = torch.Generator().manual_seed(0)
    k = 19
    logits = torch.randn(3, k, 16, 24, generator=g)
    target = logits.argmax(1)
    target = torch.where(
        torch.rand(3, 16, 24, generator=g) < 0.3, torch.randint(0, k, (3, 16, 24), generator=g), target
    )
    # class 18 never appears in predictions or targets
    logits[:, 18] = -100
    target[target == 18] = 255
    target[:, 0] = 255
    target[:, 1] = 254
    m = SegmentationIoU()
    m.update(logits[:2], target[:2])
    m.update(logits[2:].argmax(1), target[2:])  # ids work as well as logits
    out = m.compute()

    pred = logits.argmax(1).numpy().ravel()
    t = target.numpy().ravel()
    valid = t < k
    ious = []
    for c in range(k):
        inter = np.sum((pred == c) & (t == c) & valid)
        union = np.sum(((pred == c) | (t == c)) & valid)
        ious.append(inter / union if union else float("nan"))
        key = "iou_" + TRAIN_ID_NAMES[c].replace(" ", "_")
        if union:
            assert math.isclose(float(out[key]), ious[-1], rel_tol=1e-9), key
    assert math.isnan(float(out["iou_bicycle"]))
    assert math.isclose(float(out["miou"]), float(np.nanmean(ious)), rel_tol=1e-9)
    assert "iou_traffic_light" in out and len(out) == k + 1


def test_custom_classes_and_errors() -> None:
    m = SegmentationIoU(num_classes=3, class_names=["a", "b", "c"])
    m.update(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 1, 255]]))
    out = m.compute()
    assert float(out["iou_a"]) == 1.0 and float(out["iou_b"]) == 0.5 and float(out["iou_c"]) == 0.0
    assert math.isclose(float(out["miou"]), 0.5)
    numbered = SegmentationIoU(num_classes=4)
    numbered.update(torch.tensor([[0, 3]]), torch.tensor([[0, 3]]))
    assert float(numbered.compute()["iou_3"]) == 1.0
    with pytest.raises(ValueError, match="does not match"):
        m.update(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        m.update(torch.zeros(1, 5, 4), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside 0..2"):
        m.update(torch.tensor([[7, 0]]), torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match="class_names"):
        SegmentationIoU(num_classes=3, class_names=["a", "b"])


def test_non_finite_logits_raise_instead_of_becoming_a_class() -> None:
    m = SegmentationIoU(num_classes=3, class_names=["a", "b", "c"])
    logits = torch.zeros(2, 3, 4, 5)
    logits[:, 1] = 1.0
    target = torch.ones(2, 4, 5, dtype=torch.long)
    target[:, 0] = 255
    logits[1, :, 2, 3] = float("nan")
    logits[1, :, 0, 0] = float("nan")  # void pixel: ignored
    with pytest.raises(
        ValueError, match=r"3 of 120 logits .* \(3 NaN, 0 infinite\) at 1 pixel\(s\) in batch item\(s\) \[1\]"
    ):
        m.update(logits, target)
    assert int(m.confmat.sum()) == 0
    logits[1, :, 2, 3] = torch.tensor([0.0, 1.0, 0.0])
    m.update(logits, target)
    assert float(m.compute()["iou_b"]) == 1.0
