"""metrics.functional against scikit-learn and direct loops; the metric classes call it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve, roc_auc_score, roc_curve

from synthrel_lightning.metrics import CalibrationMetrics, PixelOODMetrics, SegmentationIoU
from synthrel_lightning.metrics import functional as MF


def _scores(seed: int, n: int = 5000, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    positive = torch.rand(n, generator=g) < 0.15
    scores = torch.randn(n, generator=g, dtype=torch.float64) + 1.3 * positive
    if ties:
        scores = (scores * 4).round() / 4  # many equal scores: thresholds at distinct values only
    return scores, positive


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_exact_curve_metrics_equal_sklearn(seed: int, ties: bool) -> None:
    scores, positive = _scores(seed, ties=ties)
    out = MF.binary_ood_metrics(scores, positive)
    y, s = positive.numpy(), scores.numpy()
    assert math.isclose(float(out["auroc"]), roc_auc_score(y, s), rel_tol=1e-12)
    assert math.isclose(float(out["ap"]), average_precision_score(y, s), rel_tol=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert float(out["fpr95"]) == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-15)
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    best = int(np.argmax(f1[:-1]))
    assert math.isclose(float(out["best_f1"]), f1[best], rel_tol=1e-12)
    assert float(out["best_f1_threshold"]) == thresholds[best]


def test_histogram_curves_equal_the_exact_sort_on_binned_scores() -> None:
    # integer scores: one histogram bin per value gives exactly the sort-based curves
    g = torch.Generator().manual_seed(3)
    positive = torch.rand(20000, generator=g) < 0.05
    scores = (torch.randn(20000, generator=g) * 30 + 40 * positive).round().clamp(-100, 199).long()
    hist = torch.zeros(2, 300, dtype=torch.int64)
    hist.index_put_((positive.long(), scores + 100), torch.ones(20000, dtype=torch.int64), accumulate=True)
    tps, fps, bins = MF.curve_counts_from_histogram(hist)
    exact = MF.binary_ood_metrics(scores.double(), positive)
    binned = MF.binary_curve_metrics(tps, fps, thresholds=bins.double() - 100)
    for key, value in exact.items():
        assert math.isclose(float(binned[key]), float(value), rel_tol=1e-12), key
    # the numpy entry point used for per-frame statistics gives the same numbers
    numpy_out = MF.pixel_ood_from_histograms(hist.numpy())
    for key in ("ap", "auroc", "fpr95"):
        assert numpy_out[key] == pytest.approx(float(exact[key]), rel=1e-12)


def test_empty_top_bins_count_as_precision_one() -> None:
    # cumulative counts that start with thresholds predicting nothing: precision 1 there, no NaN
    tps = torch.tensor([0.0, 0.0, 3.0, 4.0])
    fps = torch.tensor([0.0, 0.0, 1.0, 6.0])
    ap = MF.average_precision(tps, fps)
    assert math.isclose(float(ap), 0.75 * 0.75 + 0.25 * 0.4)
    assert float(MF.fpr_at_tpr(tps, fps)) == 1.0
    assert float(MF.fpr_at_tpr(tps, fps, tpr=0.75)) == pytest.approx(1 / 6)


def test_degenerate_inputs_give_nan() -> None:
    out = MF.binary_curve_metrics(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 5.0]))
    assert all(math.isnan(float(v)) for v in out.values())
    assert math.isnan(MF.pixel_ood_from_histograms(np.zeros((2, 8)))["ap"])
    assert math.isnan(MF.ece_from_bins(np.zeros((3, 15))))
    assert math.isnan(MF.miou_from_confusion(np.zeros((4, 4))))


def test_fpr95_never_rounds_below_the_boundary() -> None:
    # 19 of 20 positives is TPR 0.95 exactly: reached at the second threshold; with 18 only the last one reaches it
    tps = torch.tensor([18.0, 19.0, 20.0])
    fps = torch.tensor([1.0, 2.0, 10.0])
    assert float(MF.fpr_at_tpr(tps, fps)) == 0.2
    assert float(MF.fpr_at_tpr(tps - torch.tensor([0.0, 1.0, 0.0]), fps)) == 1.0


def _direct_ece(conf: np.ndarray, correct: np.ndarray, num_bins: int) -> float:
    ece = 0.0
    for b in range(num_bins):
        upper = conf < (b + 1) / num_bins if b < num_bins - 1 else conf <= 1
        sel = (conf >= b / num_bins) & upper
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return ece


@pytest.mark.parametrize("num_bins", [1, 10, 15])
def test_ece_from_bin_sums_equals_direct_loop(num_bins: int) -> None:
    g = torch.Generator().manual_seed(num_bins)
    conf = torch.rand(4000, generator=g).sqrt()
    correct = torch.rand(4000, generator=g) < conf * 0.9
    sums = MF.top1_bin_sums(conf, correct, num_bins)
    assert sums.shape == (3, num_bins)
    assert float(sums[0].sum()) == 4000 and float(sums[2].sum()) == float(correct.sum())
    ref = _direct_ece(conf.double().numpy(), correct.numpy().astype(float), num_bins)
    assert math.isclose(float(MF.ece_from_sums(sums)), ref, rel_tol=1e-6)
    assert math.isclose(MF.ece_from_bins(sums.numpy()), ref, rel_tol=1e-6)


def test_bin_sums_with_leading_dimensions_equal_per_row_sums() -> None:
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(3, 500, generator=g)
    correct = torch.rand(500, generator=g) < 0.5
    sums = MF.top1_bin_sums(conf, correct, 15)
    assert sums.shape == (3, 3, 15)
    for row in range(3):
        assert torch.equal(sums[row], MF.top1_bin_sums(conf[row], correct, 15))
    ece = MF.ece_from_sums(sums)
    assert ece.shape == (3,) and torch.allclose(ece[1], MF.ece_from_sums(sums[1]))


def test_adaptive_ece_from_fine_sums_equals_equal_mass_sort() -> None:
    g = torch.Generator().manual_seed(5)
    conf = 1 - torch.rand(6000, generator=g) ** 3 * 0.9
    correct = torch.rand(6000, generator=g) < conf
    value = float(MF.adaptive_ece_from_sums(MF.fine_bin_sums(conf, correct), 15))
    order = torch.argsort(conf).numpy()
    c, k = conf.double().numpy(), correct.numpy().astype(float)
    ref = sum(len(ch) / len(order) * abs(k[ch].mean() - c[ch].mean()) for ch in np.array_split(order, 15))
    assert abs(value - ref) < 1e-3


def test_miou_conventions() -> None:
    g = np.random.default_rng(0)
    target = g.integers(0, 4, 2000)
    pred = np.where(g.random(2000) < 0.7, target, g.integers(0, 4, 2000))
    cm = confusion_matrix(target, pred, labels=list(range(6)))  # classes 4 and 5 never occur
    inter = np.diag(cm)[:4]
    union = cm.sum(0)[:4] + cm.sum(1)[:4] - inter
    present = (inter / union).mean()
    assert math.isclose(MF.miou_from_confusion(cm), present, rel_tol=1e-12)
    assert math.isclose(MF.miou_from_confusion(cm, classes="all"), present * 4 / 6, rel_tol=1e-12)
    iou = MF.iou_per_class(torch.as_tensor(cm))
    assert torch.isnan(iou[4:]).all() and not torch.isnan(iou[:4]).any()
    with pytest.raises(ValueError, match="present"):
        MF.mean_iou(torch.as_tensor(cm), classes="some")  # type: ignore[arg-type]


def test_metric_classes_report_the_functional_values() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 24, 32, generator=g) * 3
    target = torch.where(torch.rand(2, 24, 32, generator=g) < 0.6, logits.argmax(1), torch.randint(0, 5, (2, 24, 32)))
    target[:, :2] = 255
    cal = CalibrationMetrics()
    cal.update(logits, target)
    valid = target < 5
    p = logits.movedim(1, -1)[valid].softmax(-1)
    conf, pred = p.max(-1)
    sums = MF.top1_bin_sums(conf, pred == target[valid], 15)
    assert math.isclose(float(cal.compute()["ece"]), float(MF.ece_from_sums(sums)), rel_tol=1e-6)

    iou = SegmentationIoU(num_classes=5, class_names=list("abcde"), miou_classes="all")
    iou.update(logits, target)
    cm = confusion_matrix(target[valid].numpy(), logits.argmax(1)[valid].numpy(), labels=list(range(5)))
    assert math.isclose(float(iou.compute()["miou"]), MF.miou_from_confusion(cm, classes="all"), rel_tol=1e-12)

    scores, positive = _scores(7)
    exact = PixelOODMetrics(mode="exact")
    exact.update(scores.float(), positive.long())
    ref = MF.binary_ood_metrics(scores.float(), positive)
    for key, value in exact.compute().items():
        assert float(value) == float(ref[key]), key


def test_numpy_entry_points_match_the_per_frame_statistics_of_correlation() -> None:
    from synthrel_lightning.correlation.frame_statistics import reducer_for

    rng = np.random.default_rng(0)
    for _ in range(5):
        hist = rng.integers(0, 20, (2, 64)) * (rng.random((2, 64)) < 0.5)
        bins = np.stack([c := rng.integers(0, 50, 15).astype(float), c * rng.random(15), c * rng.random(15)])
        cm = rng.integers(0, 30, (6, 6)) * (rng.random((6, 6)) < 0.7)
        ours = MF.pixel_ood_from_histograms(hist)
        for key in ("ap", "auroc", "fpr95"):
            assert reducer_for(key)(hist) == pytest.approx(ours[key], rel=1e-12, nan_ok=True), key
        assert reducer_for("ece")(bins) == pytest.approx(MF.ece_from_bins(bins), rel=1e-12)
        assert reducer_for("miou")(cm) == pytest.approx(MF.miou_from_confusion(cm), rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_binned_resolution_bounds_every_order_within_bins(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, bins = 3000, 40
    positive = torch.rand(n, generator=g) < 0.3
    binned = (torch.randn(n, generator=g) * 6 + 4 * positive).round().clamp(-bins // 2, bins // 2 - 1) + bins // 2
    hist = torch.stack([torch.bincount(binned[positive == v].long(), minlength=bins) for v in (False, True)])
    tied = MF.binary_curve_metrics(*MF.curve_counts_from_histogram(hist)[:2])
    bound = MF.binned_resolution(hist)
    # spread each bin's pixels over scores inside the bin: distinct in random orders, and the two extremes
    # (positives first and tied; negatives first and positives distinct)
    extremes = [positive.double(), (1 - positive.double()) * 0.9 + positive * torch.rand(n, generator=g) * 0.5]
    jitters = [torch.rand(n, generator=g) for _ in range(20)] + extremes
    seen = {key: 0.0 for key in bound}
    for jitter in jitters:
        exact = MF.binary_ood_metrics(binned.double() + 0.5 * jitter, positive)
        for key in bound:
            change = abs(float(exact[key]) - float(tied[key]))
            assert change <= float(bound[key]) + 1e-12, (key, change, float(bound[key]))
            seen[key] = max(seen[key], change)
    # the extreme orders reach the AP and best-F1 bounds: they are tight
    assert seen["ap"] == pytest.approx(float(bound["ap"]), rel=1e-3)
    assert seen["best_f1"] == pytest.approx(float(bound["best_f1"]), abs=1e-12)
    single = torch.ones(bins, dtype=torch.bool)
    assert all(float(v) == 0.0 for v in MF.binned_resolution(hist, single).values())
