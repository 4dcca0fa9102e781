"""The calibration study on logits whose optimal temperature is known by construction."""

from __future__ import annotations

import csv
import functools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthrel_lightning.calibration import expected_calibration_error, fit_temperature
from synthrel_lightning.study.calibration_stats import (
    SetCalibrationStats,
    calibration_stats,
    load_stats,
    nll_sums,
    save_stats,
    study_temperatures,
)
from synthrel_lightning.study.calibration_study import (
    CalibrationStudyResult,
    DomainPair,
    bootstrap_fraction,
    calibration_rows_from_logits,
    calibration_rows_from_stats,
    distinct_segmenters,
    fraction_improved,
    summarise_rows,
)

K = 5
GAPS = (0.5, 1.0, 2.0, 3.5, 5.0)
STEP = 0.01


def calibrated_at(t_star: float, per_gap: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) logits and targets whose ECE and NLL are minimised at ``t_star`` (up to count rounding).

    Each group of pixels has logits ``(a, 0, ..., 0)``; the top class is the target for exactly
    ``round(n * p)`` of them, ``p = softmax((a, 0, ...) / t_star)[0]``, the others spread over the
    other classes. The NLL of a group depends only on its top-class probability and is minimal
    where that equals the group's accuracy; every group reaches it at ``t_star``.
    """
    zs, ys = [], []
    for a in GAPS:
        z = torch.zeros(per_gap, K)
        z[:, 0] = a
        p = math.exp(a / t_star) / (math.exp(a / t_star) + K - 1)
        hits = round(per_gap * p)
        y = torch.zeros(per_gap, dtype=torch.long)
        y[hits:] = 1 + torch.arange(per_gap - hits) % (K - 1)
        zs.append(z)
        ys.append(y)
    return torch.cat(zs), torch.cat(ys)


def test_nll_sums_equal_cross_entropy_per_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 7, generator=g) * 4
    y = torch.randint(0, 7, (300,), generator=g)
    temps = torch.tensor([0.5, 1.0, 2.37, 9.99], dtype=torch.float64)
    got = nll_sums(z, y, temps, max_elements=50)  # tiny chunks: several pixel and temperature chunks
    want = torch.stack([F.cross_entropy(z.double() / t, y, reduction="sum") for t in temps])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_stats_ece_matches_the_calibration_package() -> None:
    z, y = calibrated_at(1.7, per_gap=500)
    stats = calibration_stats((z, y), pixels_per_image="all")
    for t in (1.0, 1.7, 3.2):
        assert float(stats.ece()[stats.index_of(t)]) == pytest.approx(
            expected_calibration_error(z, y, temperature=t), abs=1e-9
        )
    assert stats.pixels == stats.labelled == z.shape[0] and stats.frames == 1


@pytest.mark.parametrize("t_star", [0.75, 1.0, 1.73, 2.6, 3.5])
def test_recovers_the_known_optimal_temperature_with_both_rules(t_star: float) -> None:
    stats = stats_at(t_star)
    assert abs(stats.fit("nll") - t_star) <= STEP + 1e-9
    assert abs(stats.fit("ece_grid") - t_star) <= STEP + 1e-9


def test_nll_grid_fit_agrees_with_the_lbfgs_fit() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(20_000, 6, generator=g) * 3
    y = torch.distributions.Categorical(logits=z / 1.9).sample()
    lbfgs = fit_temperature((z, y), method="nll", pixels_per_image="all").temperature
    grid = calibration_stats((z, y), pixels_per_image="all").fit("nll")
    assert abs(grid - lbfgs) <= STEP / 2 + 1e-6


def test_per_frame_sample_and_void_pixels() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, K, 40, 50, generator=g)
    y = torch.randint(0, K, (3, 40, 50), generator=g)
    y[:, :10] = 255
    y[0, 10:12] = 254
    stats = calibration_stats([(z[:2], y[:2]), (z[2:], y[2:])], pixels_per_image=100, seed=5)
    assert stats.frames == 3 and stats.pixels == 300
    assert stats.labelled == int((y < K).sum())
    again = calibration_stats([(z, y)], pixels_per_image=100, seed=5)  # batch size does not change the sample
    torch.testing.assert_close(stats.bin_sums, again.bin_sums)
    torch.testing.assert_close(stats.nll_sums, again.nll_sums)
    with pytest.raises(ValueError, match="outside 0..4"):
        calibration_stats((z[0].flatten(1).t(), torch.full((2000,), 7)), pixels_per_image="all")


# (T the model needs on the synthetic set, on the real set, on the source set): whether T_syn helps
MODELS = {
    "helps_a": (1.8, 2.0, 1.0),  # real needs T=2, synthetic says 1.8: closer than T=1
    "helps_b": (0.75, 0.7, 1.3),  # overconfident on neither side: T < 1 needed, synthetic finds it
    "helps_c": (3.0, 3.5, 1.2),
    "hurts_a": (2.6, 1.0, 1.0),  # already calibrated on the real set; the synthetic T spoils it
    "hurts_b": (0.6, 1.5, 1.4),  # the synthetic T goes the wrong way
}
PAIR = DomainPair("syn_fog", "acdc_fog")


@functools.cache
def stats_at(t_star: float) -> SetCalibrationStats:
    """Statistics of :func:`calibrated_at` (shared between tests: the sets are deterministic)."""
    return calibration_stats(calibrated_at(t_star), pixels_per_image="all")


def _study_stats() -> dict:
    return {
        m: {"syn_fog": stats_at(ts), "acdc_fog": stats_at(tr), "cs_val": stats_at(tc)}
        for m, (ts, tr, tc) in MODELS.items()
    }


def test_rows_recover_each_models_temperatures_and_count_improvements() -> None:
    rows = calibration_rows_from_stats(_study_stats(), [PAIR], "cs_val")
    assert len(rows) == 2 * len(MODELS)
    for r in rows:
        ts, tr, tc = MODELS[r.model]
        assert abs(r.t_syn - ts) <= STEP + 1e-9 and abs(r.t_oracle - tr) <= STEP + 1e-9
        assert abs(r.t_src - tc) <= STEP + 1e-9
        assert r.improved == r.model.startswith("helps"), r
        assert r.improved_nll == r.model.startswith("helps"), r
        # the oracle is the best any single T does on the real set
        assert r.ece_oracle <= min(r.ece_before, r.ece_syn, r.ece_src) + 1e-12 or r.method == "nll"
        assert r.nll_oracle <= min(r.nll_before, r.nll_syn, r.nll_src) + 1e-12 or r.method == "ece_grid"
        assert r.pair == "syn_fog~acdc_fog" and r.real_frames == 1
    by = {(r.model, r.method): r for r in rows}
    # helps_a: |1.8 - 2.0| < |1.0 - 2.0| so T_syn beats the source T; hurts_b: |0.6 - 1.5| > |1.4 - 1.5|
    assert by["helps_a", "ece_grid"].beats_source and not by["hurts_b", "ece_grid"].beats_source
    s = fraction_improved(rows, "ece_grid", bootstrap=2000, seed=0)
    assert (s.improved, s.total, s.models) == (3, 5, 5) and s.fraction == pytest.approx(0.6)
    assert s.ci_low <= s.fraction <= s.ci_high and 0.0 <= s.ci_low < s.ci_high <= 1.0


def test_bootstrap_over_models_is_seeded_and_contains_the_estimate() -> None:
    flags = {f"m{i}": [i % 3 != 0, i % 4 != 0] for i in range(12)}
    a = bootstrap_fraction(flags, ci=0.9, bootstrap=3000, seed=7)
    assert a == bootstrap_fraction(flags, ci=0.9, bootstrap=3000, seed=7)
    assert a[1] <= a[0] <= a[2]
    # the pooled fraction counts every (model, pair) flag
    assert a[0] == pytest.approx(sum(sum(f) for f in flags.values()) / 24)
    # an independent transcription of the percentile bootstrap over models (resample models, pool their flags)
    rng = np.random.default_rng(7)
    hits = np.array([sum(f) for f in flags.values()], float)
    idx = rng.integers(0, 12, size=(3000, 12))
    boot = hits[idx].sum(1) / (2 * 12)
    assert a[1:] == pytest.approx(tuple(np.quantile(boot, [0.05, 0.95])))
    assert bootstrap_fraction({"a": [True], "b": [True]}, bootstrap=100) == (1.0, 1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_fraction({}, bootstrap=10))


def test_summary_per_pair_and_pooled_and_the_result_files(tmp_path) -> None:
    stats = _study_stats()
    for m, (_, tr, _) in MODELS.items():  # a second pair where every synthetic T equals the real one
        stats[m]["syn_night"] = stats[m]["acdc_night"] = stats_at(tr)
    pairs = [PAIR, DomainPair("syn_night", "acdc_night", name="night")]
    rows = calibration_rows_from_stats(stats, pairs, "cs_val", methods=["ece_grid"])
    summary = summarise_rows(rows, flags=["improved"], bootstrap=500, seed=1)
    by = {s.pair: s for s in summary}
    assert set(by) == {"syn_fog~acdc_fog", "night", "all"}
    assert by["night"].improved == 4  # hurts_a's real T is 1.0: nothing to improve there
    assert (by["all"].improved, by["all"].total, by["all"].models) == (7, 10, 5)
    result = CalibrationStudyResult(rows, summary, {"broken": "ValueError: boom"})
    files = result.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "calibration_rows.csv",
        "calibration_study.json",
        "calibration_study.md",
        "calibration_summary.csv",
    ]
    assert len(files["csv"]) == 2
    payload = json.loads((tmp_path / "calibration_study.json").read_text())  # strict JSON: no NaN
    back = CalibrationStudyResult.from_dict(payload)
    assert [r.to_dict() for r in back.rows] == [r.to_dict() for r in rows]
    csv_rows = list(csv.DictReader((tmp_path / "calibration_rows.csv").open()))
    assert len(csv_rows) == len(rows) and float(csv_rows[0]["t_syn"]) == rows[0].t_syn
    assert "broken" in (tmp_path / "calibration_study.md").read_text()


def test_missing_source_and_missing_sets() -> None:
    small = calibrated_at(2.0, per_gap=200)
    logits = {"m": {"syn_fog": small, "acdc_fog": small}, "n": {"syn_fog": small}}
    rows = calibration_rows_from_logits(logits, [PAIR], "cs_val", methods=["nll"], pixels_per_image="all")
    assert [r.model for r in rows] == ["m"]
    assert math.isnan(rows[0].t_src) and math.isnan(rows[0].ece_src) and not rows[0].beats_source
    with pytest.raises(ValueError, match="at least one"):
        calibration_rows_from_stats({}, [])
    with pytest.raises(ValueError, match="method"):
        calibration_rows_from_stats({}, [PAIR], methods=["brier"])


def test_stats_files_round_trip_and_merge(tmp_path) -> None:
    a, b = stats_at(1.5), stats_at(2.6)
    path = save_stats(tmp_path / "m.npz", {"x": a, "y~z": b})
    back = load_stats(path)
    assert list(back) == ["x", "y~z"]
    torch.testing.assert_close(back["y~z"].bin_sums, b.bin_sums)
    assert back["x"].pixels == a.pixels and back["x"].pixels_per_image == "all"
    both = a.merge(b)
    torch.testing.assert_close(both.nll_sums, a.nll_sums + b.nll_sums)
    other = SetCalibrationStats(study_temperatures((1.0, 2.0, 0.5)), a.bin_sums[:3], a.nll_sums[:3])
    with pytest.raises(ValueError, match="different temperature grids"):
        a.merge(other)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        load_stats(tmp_path / "bad.npz")


def test_distinct_segmenters_counts_a_checkpoint_once() -> None:
    from synthrel_lightning.correlation.zoo import ZooEntry

    seg = {"class_path": "synthrel_lightning.models.TinySegmenter", "init_args": {"width": 8}}
    spec = {"class_path": "synthrel_lightning.models.OODSegmenter", "init_args": {"segmenter": seg}}
    entries = [
        ZooEntry("a_msp", model={**spec, "init_args": {**spec["init_args"], "ood_score": "msp"}}),
        ZooEntry("a_energy", model={**spec, "init_args": {**spec["init_args"], "ood_score": "energy"}}),
        ZooEntry("b_msp", checkpoint="b.ckpt", model={**spec, "init_args": {**spec["init_args"], "ood_score": "msp"}}),
    ]
    kept, dropped = distinct_segmenters(entries)
    assert [e.name for e in kept] == ["a_msp", "b_msp"] and dropped == {"a_energy": "a_msp"}
