"""Correlation statistics: coefficients against scipy, bootstrap CIs, undefined cases, subsampling curve."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from synthrel_lightning.correlation import (
    correlate_pairs,
    correlate_records,
    ece_from_bins,
    miou_from_confusion,
    pixel_ood_from_histograms,
    pool_histories,
    subsample_curve,
    write_json_atomic,
)


def _data(n: int = 25, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.8 * x + 0.5 * rng.normal(size=n)
    # A tie in each variable exercises tau-b.
    x[3] = x[4]
    y[1] = y[2]
    return x, y


def test_coefficients_and_pvalues_match_scipy() -> None:
    x, y = _data()
    res = correlate_pairs(x, y, bootstrap=200, seed=1)
    for method, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        ref = fn(x, y)
        assert res[method].ok and res[method].n == x.size
        assert res[method].coefficient == pytest.approx(float(ref[0]), abs=1e-12)
        assert res[method].p_value == pytest.approx(float(ref[1]), rel=1e-9)


def test_bootstrap_ci_matches_manual_percentiles_and_brackets_estimate() -> None:
    x, y = _data(n=15)
    res = correlate_pairs(x, y, methods=("pearson", "kendall"), bootstrap=300, ci=0.9, seed=7)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, x.size, size=(300, x.size))
    for method, fn in (("pearson", stats.pearsonr), ("kendall", stats.kendalltau)):
        boot = []
        for row in idx:
            xs, ys = x[row], y[row]
            if np.ptp(xs) == 0 or np.ptp(ys) == 0:
                continue
            boot.append(float(fn(xs, ys)[0]))
        lo, hi = np.quantile(boot, [0.05, 0.95])
        assert res[method].ci_low == pytest.approx(lo, abs=1e-9)
        assert res[method].ci_high == pytest.approx(hi, abs=1e-9)
        assert res[method].ci_low <= res[method].coefficient <= res[method].ci_high
        assert res[method].bootstrap_valid == len(boot)


def test_too_few_points_and_constant_input_are_reported_not_nan() -> None:
    res = correlate_pairs([0.1, 0.2], [0.3, 0.5])
    for c in res.values():
        assert not c.ok and c.status == "not_enough_points" and c.coefficient is None
        assert c.message == "not enough points (n=2, need ≥ 3)"
    res = correlate_pairs([0.4, 0.4, 0.4, 0.4], [0.1, 0.2, 0.3, 0.4])
    assert res["spearman"].status == "constant_input"
    assert "x (synthetic) is constant" in res["spearman"].message and res["spearman"].coefficient is None
    json.dumps({k: v.to_dict() for k, v in res.items()}, allow_nan=False)


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(ValueError, match="non-finite values at positions \\[1\\]"):
        correlate_pairs([0.1, float("nan"), 0.3], [1, 2, 3])
    with pytest.raises(ValueError, match="pair up one to one"):
        correlate_pairs([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="unknown correlation method 'cosine'"):
        correlate_pairs([1, 2, 3], [1, 2, 4], methods=("cosine",))


def test_reducers_match_reference_definitions() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    conf = rng.integers(0, 50, size=(4, 4))
    tp = np.diag(conf)
    assert miou_from_confusion(conf) == pytest.approx(np.mean(tp / (conf.sum(0) + conf.sum(1) - tp)))
    # Integer-valued scores: a histogram with one bin per value is exact.
    scores = rng.integers(0, 20, size=2000)
    labels = (rng.random(2000) < 0.2 + 0.03 * scores).astype(int)
    hist = np.stack([np.bincount(scores[labels == 0], minlength=20), np.bincount(scores[labels == 1], minlength=20)])
    got = pixel_ood_from_histograms(hist)
    assert got["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    bins = np.array([[10, 30], [6.0, 27.0], [5, 24]])
    assert ece_from_bins(bins) == pytest.approx((1 + 3) / 40)


def test_subsample_curve_recomputes_dataset_level_metric_on_shared_subsets() -> None:
    rng = np.random.default_rng(5)
    n_models, n_frames, k = 6, 12, 3
    quality = np.linspace(0.3, 0.9, n_models)
    frame_stats = []
    for q in quality:
        conf = np.zeros((n_frames, k, k))
        for f in range(n_frames):
            total = rng.integers(50, 100, size=k)
            correct = rng.binomial(total, q)
            conf[f][np.arange(k), np.arange(k)] = correct
            conf[f][np.arange(k), (np.arange(k) + 1) % k] = total - correct
        frame_stats.append(conf)
    real = quality + rng.normal(scale=0.02, size=n_models)
    curve = subsample_curve(frame_stats, real, "miou", sizes=[1, 4, n_frames], repeats=15, seed=2)
    assert [p.size for p in curve] == [1, 4, n_frames]
    full = curve[-1]
    assert full.repeats == 1 and full.valid == 1
    x_full = [miou_from_confusion(s.sum(0)) for s in frame_stats]
    assert full.mean == pytest.approx(stats.pearsonr(x_full, real)[0], abs=1e-12)
    assert all(p.low <= p.mean <= p.high for p in curve)
    # Fewer frames make the synthetic estimate noisier, which can only blur the correlation on average.
    assert curve[0].std >= curve[1].std - 1e-9
    with pytest.raises(ValueError, match="same frames"):
        subsample_curve([frame_stats[0], frame_stats[1][:5], frame_stats[2]], real[:3], "miou")
    with pytest.raises(ValueError, match="outside 1..12"):
        subsample_curve(frame_stats, real, "miou", sizes=[13])


def test_histories_pool_and_correlate(tmp_path) -> None:
    x, y = _data(n=8)
    recs = [{"synthetic": "s", "real": "r", "metric": "miou", "x": float(a), "y": float(b)} for a, b in zip(x, y)]
    write_json_atomic(tmp_path / "a.json", {"records": recs[:4]})
    write_json_atomic(tmp_path / "b.json", {"records": recs[4:]})
    pooled = pool_histories([tmp_path / "a.json", tmp_path / "b.json"])
    assert len(pooled) == 8 and pooled[0]["source"].endswith("a.json")
    res = correlate_records(pooled, bootstrap=50)
    assert res["s~r/miou"]["pearson"].coefficient == pytest.approx(stats.pearsonr(x, y)[0])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json has no 'records' list"):
        pool_histories([tmp_path / "bad.json"])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        pool_histories([tmp_path / "missing.json"])
