"""Per-frame statistics and the subsampling curve; pooled MetricCorrelation histories."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.correlation.frame_statistics import (
    ece_from_bins,
    miou_from_confusion,
    pixel_ood_from_histograms,
    reducer_for,
)
from synthrel_lightning.correlation.histories import correlate_records, pool_histories
from synthrel_lightning.correlation.subsampling import subsample_curve


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
    assert reducer_for("auroc")(hist) == got["auroc"]
    bins = np.array([[10, 30], [6.0, 27.0], [5, 24]])
    assert ece_from_bins(bins) == pytest.approx((1 + 3) / 40)
    with pytest.raises(ValueError, match="no per-frame reducer for metric 'mean_F1'; supported: miou, ece"):
        reducer_for("mean_F1")


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
    rng = np.random.default_rng(3)
    x = rng.normal(size=8)
    y = 0.8 * x + 0.5 * rng.normal(size=8)
    recs = [{"synthetic": "s", "real": "r", "metric": "miou", "x": float(a), "y": float(b)} for a, b in zip(x, y)]
    atomic_write_json(tmp_path / "a.json", {"records": recs[:4]})
    atomic_write_json(tmp_path / "b.json", {"records": recs[4:]})
    pooled = pool_histories([tmp_path / "a.json", tmp_path / "b.json"])
    assert len(pooled) == 8 and pooled[0]["source"].endswith("a.json")
    res = correlate_records(pooled, bootstrap=50)
    assert res["s~r/miou"]["pearson"].coefficient == pytest.approx(stats.pearsonr(x, y)[0])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json has no 'records' list"):
        pool_histories([tmp_path / "bad.json"])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        pool_histories([tmp_path / "missing.json"])
