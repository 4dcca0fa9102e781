"""The official SegmentMeIfYouCan aggregation against a transcription of the benchmark code.

Transcribed from SegmentMeIfYouCan/road-anomaly-benchmark: metrics/pixel_classification.py
(binary_confusion_matrix with bin_strategy 'percentiles', num_bins 768; aggregate_dynamic_bins),
metrics/pixel_classification_curves.py (curves_from_cmats), metrics/instance_segmentation.py
(default_instancer, segment_metrics, MetricSegment.aggregate).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import label as cc_label

from synthrel_lightning.metrics import ComponentMetrics, PixelOODMetrics


# ----------------------------------------------------------------------------- transcription (pixels)
def ref_frame(prob: np.ndarray, gt: np.ndarray, num_bins: int = 768) -> dict:
    prob_at_true, prob_at_false = prob[gt], prob[~gt]
    vmin, vmax = np.min(prob), np.max(prob)
    eps = np.maximum((vmax - vmin) * 1e-2, 1e-2)
    bins = [[vmin - eps, vmax + eps]]
    if prob_at_true.size:
        bins += [np.quantile(prob_at_true, np.linspace(0, 1, min(num_bins // 2, prob_at_true.size)))]
    if prob_at_false.size:
        bins += [np.quantile(prob_at_false, np.linspace(0, 1, min(num_bins // 2, prob_at_false.size)))]
    bins = np.unique(np.concatenate(bins))
    tp_rel, _ = np.histogram(prob_at_true, bins=bins)
    fp_rel, bin_edges = np.histogram(prob_at_false, bins=bins)
    return {
        "bin_edges": bin_edges[::-1],
        "tp_rel": tp_rel[::-1],
        "fp_rel": fp_rel[::-1],
        "num_pos": np.count_nonzero(gt),
        "num_neg": gt.size - np.count_nonzero(gt),
    }


def ref_aggregate(frames: list[dict]) -> dict:
    thresholds = np.concatenate([r["bin_edges"][1:] for r in frames])
    tp_relative = np.concatenate([r["tp_rel"] for r in frames])
    fp_relative = np.concatenate([r["fp_rel"] for r in frames])
    num_pos, num_neg = sum(r["num_pos"] for r in frames), sum(r["num_neg"] for r in frames)
    order = np.argsort(thresholds)[::-1]
    tp_cumu = np.cumsum(tp_relative[order].astype(np.float64))
    fp_cumu = np.cumsum(fp_relative[order].astype(np.float64))
    cmats = np.array([[tp_cumu, fp_cumu], [num_pos - tp_cumu, num_neg - fp_cumu]]).transpose([2, 0, 1])
    return ref_curves(cmats, thresholds[order])


def ref_curves(cmats: np.ndarray, thresholds: np.ndarray) -> dict:
    idx = np.concatenate([[0], np.nonzero(thresholds[:-1] != thresholds[1:])[0], [cmats.__len__() - 1]])
    cmats, thresholds = cmats[idx], thresholds[idx]
    tp, fp, fn, tn = cmats[:, 0, 0], cmats[:, 0, 1], cmats[:, 1, 0], cmats[:, 1, 1]
    num_pos, num_neg = tp[0] + fn[0], fp[0] + tn[0]
    if tp[0] != 0 or fp[0] != 0:
        tp, fp = np.concatenate([[0], tp]), np.concatenate([[0], fp])
        fn, tn = np.concatenate([[num_pos], fn]), np.concatenate([[num_neg], tn])
        thresholds = np.concatenate([[float(np.max(thresholds)) + 1], thresholds])
    if tp[-1] != num_pos or fp[-1] != num_neg:
        tp, fp = np.concatenate([tp, [num_pos]]), np.concatenate([fp, [num_neg]])
        fn, tn = np.concatenate([fn, [0]]), np.concatenate([tn, [0]])
        thresholds = np.concatenate([thresholds, [float(np.max(thresholds)) - 1]])
    tp_rates, fp_rates = tp / (tp + fn), fp / (fp + tn)
    n_preds = tp + fp
    precisions = np.ones(tp.shape[0], np.float64)
    precisions[n_preds > 0] = tp[n_preds > 0] / n_preds[n_preds > 0]
    recalls = tp / (tp + fn)
    f1_scores = (2 * tp) / (2 * tp + fp + fn)
    i95 = np.searchsorted(tp_rates, 0.95)
    ix = np.nanargmax(f1_scores)
    return {
        "auroc": np.trapezoid(tp_rates, fp_rates),
        "ap": np.sum(np.diff(recalls) * precisions[1:]),
        "fpr95": fp_rates[i95] if i95 < tp_rates.shape[0] else 1.0,
        "best_f1": f1_scores[ix],
        "best_f1_threshold": float(thresholds[ix]),
    }


# ----------------------------------------------------------------------------- transcription (components)
def ref_instancer(anomaly_p, label_pixel_gt, thresh_p, thresh_segsize, thresh_instsize):
    segmentation = np.copy(anomaly_p)
    segmentation[anomaly_p > thresh_p] = 1
    segmentation[anomaly_p <= thresh_p] = 0
    anomaly_gt = np.zeros(label_pixel_gt.shape)
    anomaly_gt[label_pixel_gt == 1] = 1
    anomaly_pred = np.zeros(label_pixel_gt.shape)
    anomaly_pred[segmentation == 1] = 1
    anomaly_pred[label_pixel_gt == 255] = 0
    structure = np.ones((3, 3), dtype=np.uint8)
    anomaly_instances, n_anomaly = cc_label(anomaly_gt, structure)
    anomaly_seg_pred, n_seg_pred = cc_label(anomaly_pred, structure)
    labeled_mask = np.copy(anomaly_seg_pred)
    for comp in range(n_seg_pred + 1):
        if len(anomaly_seg_pred[labeled_mask == comp]) < thresh_segsize:
            anomaly_seg_pred[labeled_mask == comp] = 0
    labeled_mask = np.copy(anomaly_instances)
    label_pixel_gt = label_pixel_gt.copy()
    for comp in range(n_anomaly + 1):
        if len(anomaly_instances[labeled_mask == comp]) < thresh_instsize:
            label_pixel_gt[labeled_mask == comp] = 255
    mask_roi = label_pixel_gt < 255
    return anomaly_instances[mask_roi], anomaly_seg_pred[mask_roi]


def ref_segment_metrics(anomaly_instances, anomaly_seg_pred, taus):
    siou_gt, siou_pred, prec_pred = [], [], []
    for i in np.unique(anomaly_instances[anomaly_instances > 0]):
        tp_loc = anomaly_seg_pred[anomaly_instances == i]
        seg_ind = np.unique(tp_loc[tp_loc != 0])
        intersection = len(tp_loc[np.isin(tp_loc, seg_ind)])
        adjustment = len(
            anomaly_seg_pred[np.logical_and(~np.isin(anomaly_instances, [0, i]), np.isin(anomaly_seg_pred, seg_ind))]
        )
        union = np.sum(np.isin(anomaly_seg_pred, seg_ind)) + np.sum(anomaly_instances == i) - intersection - adjustment
        siou_gt.append(intersection / union)
    for i in np.unique(anomaly_seg_pred[anomaly_seg_pred > 0]):
        tp_loc = anomaly_instances[anomaly_seg_pred == i]
        seg_ind = np.unique(tp_loc[tp_loc != 0])
        intersection = len(tp_loc[np.isin(tp_loc, seg_ind)])
        adjustment = len(
            anomaly_instances[np.logical_and(~np.isin(anomaly_seg_pred, [0, i]), np.isin(anomaly_instances, seg_ind))]
        )
        union = np.sum(np.isin(anomaly_instances, seg_ind)) + np.sum(anomaly_seg_pred == i) - intersection - adjustment
        siou_pred.append(intersection / union)
        prec_pred.append(intersection / np.sum(anomaly_seg_pred == i))
    out = {"sIoU_gt": np.array(siou_gt), "sIoU_pred": np.array(siou_pred), "prec_pred": np.array(prec_pred)}
    for t in taus:
        out[f"tp_{int(t * 100)}"] = np.count_nonzero(out["sIoU_gt"] >= t)
        out[f"fn_{int(t * 100)}"] = np.count_nonzero(out["sIoU_gt"] < t)
        out[f"fp_{int(t * 100)}"] = np.count_nonzero(out["prec_pred"] < t)
    return out


def ref_component_aggregate(frames, taus):
    res = {"sIoU_gt": sum(np.sum(r["sIoU_gt"]) for r in frames) / sum(len(r["sIoU_gt"]) for r in frames)}
    res["prec_pred"] = sum(np.sum(r["prec_pred"]) for r in frames) / sum(len(r["prec_pred"]) for r in frames)
    f1s = []
    for t in taus:
        tp, fn, fp = (sum(r[f"{k}_{int(t * 100)}"] for r in frames) for k in ("tp", "fn", "fp"))
        f1s.append((2 * tp) / (2 * tp + fn + fp))
    res["f1_mean"] = float(np.mean(f1s))
    return res


# ----------------------------------------------------------------------------- data and tests
def frames(seed: int, n: int = 5, h: int = 96, w: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth score maps with OOD blobs, void borders and a few ties (float16 rounding)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(n, h, w, dtype=torch.uint8)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            y, x = int(torch.randint(0, h - 30, (1,), generator=g)), int(torch.randint(0, w - 30, (1,), generator=g))
            sy, sx = (int(v) for v in torch.randint(6, 30, (2,), generator=g))
            target[i, y : y + sy, x : x + sx] = 1
    target[:, :6] = 255
    noise = torch.nn.functional.avg_pool2d(torch.randn(n, 1, h, w, generator=g), 7, 1, 3)[:, 0] * 3
    scores = torch.sigmoid(noise + 2.0 * (target == 1) - 1.0)
    return scores, target


def test_official_pixel_aggregation_equals_the_benchmark_code() -> None:
    scores, target = frames(0)
    metric = PixelOODMetrics(aggregation="official")
    metric.update(scores[:2], target[:2])
    metric.update(scores[2:], target[2:])
    got = {k: float(v) for k, v in metric.compute().items()}
    ref_frames = []
    for s, t in zip(scores.numpy().astype(np.float16), target.numpy()):  # the benchmark reads float16 maps
        roi = t < 255
        ref_frames.append(ref_frame(s[roi], t[roi].astype(bool)))
    ref = ref_aggregate(ref_frames)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    exact = PixelOODMetrics(mode="exact")
    exact.update(scores, target)
    exact_values = {k: float(v) for k, v in exact.compute().items()}
    assert abs(exact_values["ap"] - got["ap"]) > 1e-4  # the binning shows: the two aggregations differ


def test_official_components_equal_the_benchmark_code() -> None:
    scores, target = frames(1, n=4)
    pixel = PixelOODMetrics(aggregation="official")
    pixel.update(scores, target)
    threshold = float(pixel.compute()["best_f1_threshold"])
    comp = ComponentMetrics(aggregation="official", threshold=threshold, min_pred_size=20, min_gt_size=10)
    comp.update(scores, target)
    got = {k: float(v) for k, v in comp.compute().items()}
    taus = np.linspace(0.25, 0.75, 11, endpoint=True)
    ref_frames = [
        ref_segment_metrics(*ref_instancer(s, t, threshold, 20, 10), taus)
        for s, t in zip(scores.numpy().astype(np.float16), target.numpy())
    ]
    ref = ref_component_aggregate(ref_frames, taus)
    assert got["siou"] == pytest.approx(ref["sIoU_gt"], abs=1e-12)
    assert got["ppv"] == pytest.approx(ref["prec_pred"], abs=1e-12)
    assert got["mean_f1"] == pytest.approx(ref["f1_mean"], abs=1e-12)


def test_unknown_aggregation_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown aggregation 'leaderboard'; valid: exact, official"):
        PixelOODMetrics(aggregation="leaderboard")
    with pytest.raises(ValueError, match="unknown aggregation 'leaderboard'; valid: exact, official"):
        ComponentMetrics(aggregation="leaderboard", threshold=0.5)
    from synthrel_lightning.models.set_metrics import check_ood_metric_mode

    with pytest.raises(ValueError, match="unknown ood_metric_mode 'offical'; valid: binned, exact, official"):
        check_ood_metric_mode("offical", "OODSegmenter")


def test_nan_components_say_why_once() -> None:
    scores, target = torch.zeros(1, 16, 16), torch.zeros(1, 16, 16, dtype=torch.uint8)
    target[0, 2:4, 2:4] = 1  # a 4 px object: smaller than the anomaly track's 100 px, so void
    metric = ComponentMetrics(threshold=0.5)
    metric.update(scores, target)
    with pytest.warns(UserWarning, match="no ground-truth OOD component of at least min_gt_size=100 px"):
        out = metric.compute()
    assert torch.isnan(out["siou"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.compute()  # once per cause
