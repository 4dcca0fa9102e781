"""ComponentMetrics on hand-built masks and against a loop-for-loop port of the benchmark's procedure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from synthrel_lightning.metrics import SIOU_THRESHOLDS, ComponentMetrics, frame_component_stats
from synthrel_lightning.metrics.components import predicted_mask


def two_frames() -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-built frames; expected values are derived in the test by hand."""
    target = torch.zeros(2, 40, 40, dtype=torch.long)
    scores = torch.zeros(2, 40, 40)
    # frame 0: GT A and B (10x10 each), one prediction (10x20) half on A, half on B, 100 px between
    target[0, 5:15, 5:15] = 1
    target[0, 5:15, 25:35] = 1
    scores[0, 5:15, 10:30] = 1.0
    # frame 1: GT C matched exactly; a 4 px prediction (dropped, < 5 px); a 3 px GT blob
    # (below 5 px -> void) under a 6 px prediction whose 3 remaining ROI pixels are background
    target[1, 20:30, 20:30] = 1
    scores[1, 20:30, 20:30] = 1.0
    scores[1, 2:4, 2:4] = 1.0
    target[1, 35, 2:5] = 1
    scores[1, 35:37, 2:5] = 1.0
    target[1, 0, :] = 255
    return scores, target


def test_hand_built_frames() -> None:
    scores, target = two_frames()
    m = ComponentMetrics(threshold=0.5, min_pred_size=5, min_gt_size=5)
    m.update(scores[0], target[0])
    m.update(scores[1:], target[1:])
    out = m.compute()

    # sIoU(A) = |A∩P| / (|A∪P| - |P ∩ B|) = 50 / (250 - 50); same for B; sIoU(C) = 1
    siou_gt = np.array([0.25, 0.25, 1.0])
    # PPV(P1) = 100/200; PPV(P2) = 1; PPV(P3) = 0/3 (its GT pixels became void)
    ppv = np.array([0.5, 1.0, 0.0])
    # sIoU_pred(P1) = 100 / (200 + 200 - 100)
    siou_pred = np.array([1 / 3, 1.0, 0.0])
    taus = np.linspace(0.25, 0.75, 11)
    tp = np.array([(siou_gt >= t).sum() for t in taus])
    fn = np.array([(siou_gt < t).sum() for t in taus])
    fp = np.array([(ppv < t).sum() for t in taus])
    f1 = 2 * tp / (2 * tp + fn + fp)

    assert m.tp.tolist() == tp.tolist() and m.fn.tolist() == fn.tolist() and m.fp.tolist() == fp.tolist()
    assert int(m.n_gt) == 3 and int(m.n_pred) == 3
    assert math.isclose(float(out["siou"]), siou_gt.mean())
    assert math.isclose(float(out["ppv"]), ppv.mean())
    assert math.isclose(float(out["siou_pred"]), siou_pred.mean())
    assert math.isclose(float(out["mean_f1"]), f1.mean())
    assert math.isclose(float(out["f1_25"]), 2 * 3 / (2 * 3 + 0 + 1))  # TP 3, FN 0, FP 1 (P3)
    assert math.isclose(float(out["f1_75"]), f1[-1])


def test_eight_connectivity_threshold_rule_and_track_sizes() -> None:
    target = torch.zeros(20, 20, dtype=torch.long)
    target[2:6, 2:6] = 1
    target[6:10, 6:10] = 1  # touches the first square at a corner only: one component
    scores = torch.zeros(20, 20)
    scores[2:6, 2:6] = 0.5
    m = ComponentMetrics(threshold=0.5, min_pred_size=1, min_gt_size=1, inclusive=False)
    m.update(scores, target)
    assert int(m.n_gt) == 1 and int(m.n_pred) == 0  # the official score > threshold: nothing predicted
    inclusive = ComponentMetrics(threshold=0.5, min_pred_size=1, min_gt_size=1)  # default: score >= threshold
    inclusive.update(scores, target)
    assert int(inclusive.n_pred) == 1
    assert math.isclose(float(inclusive.compute()["siou"]), 16 / 32)
    assert ComponentMetrics(track="obstacle").min_pred_size == 50
    assert ComponentMetrics(track="obstacle").min_gt_size == 10
    anomaly = ComponentMetrics()
    assert (anomaly.min_pred_size, anomaly.min_gt_size) == (500, 100)


def reference_frame(score: np.ndarray, label: np.ndarray, thr: float, seg_min: int, inst_min: int) -> dict:
    """Loop-by-loop implementation of the benchmark's instancer and segment metrics."""
    structure = np.ones((3, 3), dtype=np.uint8)
    pred = (score > thr).astype(np.uint8)
    pred[label == 255] = 0
    gt_inst, n_gt = ndimage.label(label == 1, structure)
    pred_inst, n_pred = ndimage.label(pred, structure)
    orig = pred_inst.copy()
    for c in range(n_pred + 1):
        if (orig == c).sum() < seg_min:
            pred_inst[orig == c] = 0
    label = label.copy()
    for c in range(n_gt + 1):
        if (gt_inst == c).sum() < inst_min:
            label[gt_inst == c] = 255
    roi = label < 255
    g, p = gt_inst[roi], pred_inst[roi]
    siou_gt, siou_pred, ppv = [], [], []
    for i in np.unique(g[g > 0]):
        touching = np.unique(p[(g == i) & (p > 0)])
        in_p = np.isin(p, touching)
        inter = ((g == i) & in_p).sum()
        adj = (in_p & (g > 0) & (g != i)).sum()
        siou_gt.append(inter / (in_p.sum() + (g == i).sum() - inter - adj))
    for j in np.unique(p[p > 0]):
        touching = np.unique(g[(p == j) & (g > 0)])
        in_g = np.isin(g, touching)
        inter = ((p == j) & in_g).sum()
        adj = (in_g & (p > 0) & (p != j)).sum()
        siou_pred.append(inter / (in_g.sum() + (p == j).sum() - inter - adj))
        ppv.append(inter / (p == j).sum())
    return {"siou_gt": np.array(siou_gt), "siou_pred": np.array(siou_pred), "ppv": np.array(ppv)}


@pytest.mark.parametrize("seed", range(4))
def test_random_frames_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = 64, 80
    # blobby GT and a noisy, blobby prediction so components merge, split and overlap several GTs
    gt = ndimage.gaussian_filter(rng.random((h, w)), 2.5) > 0.56
    label = gt.astype(np.int64)
    label[ndimage.gaussian_filter(rng.random((h, w)), 3) > 0.57] = 255
    score = ndimage.gaussian_filter(gt + rng.normal(0, 0.6, (h, w)), 1.5).astype(np.float32)
    thr = float(np.quantile(score, 0.85))
    ref = reference_frame(score, label, thr, seg_min=8, inst_min=6)
    ours = frame_component_stats(score > thr, label, min_pred_size=8, min_gt_size=6)
    assert len(ref["siou_gt"]) >= 2 and len(ref["ppv"]) >= 2
    for key in ref:
        np.testing.assert_allclose(np.sort(ours[key]), np.sort(ref[key]), rtol=0, atol=1e-12, err_msg=key)


def test_threshold_required_and_bad_inputs() -> None:
    m = ComponentMetrics()
    with pytest.raises(RuntimeError, match="set_threshold"):
        m.update(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.long))
    m.set_threshold(0.3)
    with pytest.raises(ValueError, match="does not match"):
        m.update(torch.zeros(4, 4), torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[3\]"):
        m.update(torch.zeros(4, 4), torch.full((4, 4), 3))
    with pytest.raises(ValueError, match="track"):
        ComponentMetrics(track="lost_and_found")
    assert len(SIOU_THRESHOLDS) == 11
    empty = ComponentMetrics(threshold=0.0)
    empty.update(torch.zeros(8, 8), torch.zeros(8, 8, dtype=torch.long))
    assert all(math.isnan(float(v)) for v in empty.compute().values())


def blobby_frames(seed: int, n: int = 3, h: int = 48, w: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Frames with several GT blobs, a void band and noisy blobby scores."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        gt = ndimage.gaussian_filter(rng.random((h, w)), 2.5) > 0.56
        label = gt.astype(np.int64)
        label[:4] = 255
        score = ndimage.gaussian_filter(gt + rng.normal(0, 0.6, (h, w)), 1.5).astype(np.float32)
        frames.append((torch.from_numpy(score)[None], torch.from_numpy(label)[None]))
    return frames


def test_one_pass_with_deferred_frames_equals_the_two_pass_protocol() -> None:
    from synthrel_lightning.metrics import PixelOODMetrics

    frames = blobby_frames(0)
    pixel = PixelOODMetrics(mode="exact")
    deferred = ComponentMetrics(defer=True, min_pred_size=8, min_gt_size=6)
    for scores, target in frames:  # the single pass
        pixel.update(scores, target)
        deferred.update(scores, target)
    assert deferred.pending_frames == 3
    with pytest.raises(RuntimeError, match="3 deferred frame"):
        deferred.compute()
    threshold = float(pixel.compute()["best_f1_threshold"])
    deferred.set_threshold(threshold)
    assert deferred.pending_frames == 0
    two_pass = ComponentMetrics(threshold=threshold, min_pred_size=8, min_gt_size=6)
    for scores, target in frames:
        two_pass.update(scores, target)
    expected = two_pass.compute()
    got = deferred.compute()
    assert int(two_pass.n_gt) >= 3
    for key, value in expected.items():
        assert float(got[key]) == pytest.approx(float(value), nan_ok=True), key
    # frames after the threshold is known are scored at once; reset drops deferred frames
    deferred.update(*frames[0])
    assert deferred.pending_frames == 0
    later = ComponentMetrics(defer=True)
    later.update(*frames[1])
    later.reset()
    assert later.pending_frames == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("inclusive", [True, False])
def test_threshold_is_compared_exactly_in_every_dtype(dtype: torch.dtype, inclusive: bool) -> None:
    # a blob at 0.875 (exact in every dtype); thresholds just below / at / just above it
    target = torch.zeros(16, 16, dtype=torch.long)
    target[4:10, 4:10] = 1
    scores = torch.zeros(16, 16, dtype=dtype)
    scores[4:10, 4:10] = 0.875
    for threshold, expected in [(0.8745, 1), (0.875 - 1e-12, 1), (0.875, int(inclusive)), (0.875 + 1e-12, 0)]:
        m = ComponentMetrics(threshold=threshold, min_pred_size=1, min_gt_size=1, inclusive=inclusive)
        m.update(scores, target)
        assert int(m.n_pred) == expected, (threshold, dtype)
        assert torch.equal(
            predicted_mask(scores, threshold, inclusive),
            scores.double() >= threshold if inclusive else scores.double() > threshold,
        )


def test_components_use_the_pixel_metric_operating_point() -> None:
    from synthrel_lightning.metrics import PixelOODMetrics
    from synthrel_lightning.models.set_metrics import build_set_metrics

    # OOD blobs all at one score: the best-F1 threshold is that score, and score >= it predicts them
    target = torch.zeros(2, 24, 24, dtype=torch.long)
    target[0, 3:12, 3:12] = 1
    target[1, 10:20, 5:15] = 1
    scores = torch.where(target == 1, 0.75, 0.25).float()
    scores[1, 0:3, 0:3] = 0.5  # a small false positive below the threshold
    for mode in ("binned", "exact"):
        pixel = PixelOODMetrics(mode=mode)
        pixel.update(scores, target)
        threshold = float(pixel.compute()["best_f1_threshold"])
        assert float(pixel.compute()["best_f1"]) == 1.0
        components = build_set_metrics(["pixel_ood", "components"], 2, ["a", "b"], mode, 15, "pooled", "obstacle")
        metric = components["components"]
        metric.set_threshold(threshold)
        metric.update(scores, target)
        out = metric.compute()
        assert int(metric.n_pred) == 2 and float(out["siou"]) == 1.0 and float(out["mean_f1"]) == 1.0
