"""Correlation statistics: coefficients against scipy, exact small-sample p-values and intervals, undefined cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from synthrel_lightning.correlation.statistics import (
    FEW_MODELS,
    copula_interval,
    correlate_pairs,
    fisher_z_interval,
    format_correlation,
)


def _data(n: int = 25, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.8 * x + 0.5 * rng.normal(size=n)
    # A tie in each variable exercises tau-b.
    x[3] = x[4]
    y[1] = y[2]
    return x, y


def test_coefficients_and_large_n_pvalues_match_scipy() -> None:
    x, y = _data()
    res = correlate_pairs(x, y)
    for method, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        ref = fn(x, y)
        assert res[method].ok and res[method].n == x.size and res[method].warning == ""
        assert res[method].coefficient == pytest.approx(float(ref[0]), abs=1e-12)
        assert res[method].p_value == pytest.approx(float(ref[1]), rel=1e-9)


def test_perfect_ranking_of_four_models_has_exact_p_and_a_wide_interval() -> None:
    # Four models ranked identically on both sets: the case (was p = 0 and [1.00, 1.00]).
    x, y = [0.30, 0.42, 0.55, 0.61], [0.21, 0.35, 0.41, 0.60]
    res = correlate_pairs(x, y)
    for method in ("spearman", "kendall"):
        c = res[method]
        assert c.coefficient == pytest.approx(1.0)
        # Exact: 1 of the 24 orderings is as concordant, 1 as discordant.
        assert c.p_value == pytest.approx(2 / 24) and c.p_method == "exact permutation (24 pairings)"
        assert c.interval == "copula" and c.ci_high == pytest.approx(1.0)
        # Not significant at 5%, so the 95% interval reaches below zero.
        assert c.ci_low < 0.0 and c.ci_high - c.ci_low > 1.0
        assert "only 4 models" in c.warning and "fewer than 8" in c.warning
    assert res["pearson"].p_value == pytest.approx(2 / 24) and res["pearson"].ci_low < res["pearson"].coefficient


def test_exact_pvalues_match_scipy_exact_kendall_and_enumeration() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=6), rng.normal(size=6)
    res = correlate_pairs(x, y, interval="fisher_z")
    assert res["kendall"].p_value == pytest.approx(stats.kendalltau(x, y, method="exact").pvalue, abs=1e-12)
    import itertools

    rho = stats.spearmanr(x, y)[0]
    perms = [stats.spearmanr(x, y[list(p)])[0] for p in itertools.permutations(range(6))]
    two_sided = 2 * min(np.mean(np.array(perms) >= rho - 1e-12), np.mean(np.array(perms) <= rho + 1e-12))
    assert res["spearman"].p_value == pytest.approx(min(1.0, two_sided), abs=1e-12)


def test_three_models_report_a_warning_and_a_non_degenerate_interval() -> None:
    res = correlate_pairs([0.1, 0.2, 0.3], [0.3, 0.5, 0.55])
    for c in res.values():
        assert c.ok and c.warning.startswith("only 3 models")
        assert c.ci_low is not None and c.ci_high - c.ci_low > 1.0
        assert c.p_value == pytest.approx(2 / 6)
    assert format_correlation(res["spearman"]).startswith("spearman rho=1.000 [")


def test_copula_interval_agrees_with_fisher_z_for_pearson_and_is_seeded() -> None:
    # Under a Gaussian copula with normal marginals the inversion is the exact normal-theory
    # interval, which Fisher's z approximates well from a handful of points on.
    for r, n in ((0.6, 7), (-0.3, 10), (0.9, 12)):
        lo, hi = copula_interval("pearson", r, n, 0.95, seed=1)
        f_lo, f_hi = fisher_z_interval("pearson", r, n, 0.95)
        assert lo == pytest.approx(f_lo, abs=0.05) and hi == pytest.approx(f_hi, abs=0.05)
    assert copula_interval("kendall", 0.6, 6, seed=3) == copula_interval("kendall", 0.6, 6, seed=3)


def test_fisher_z_intervals_from_eight_models_follow_their_formulas() -> None:
    x, y = _data(n=12, seed=8)
    res = correlate_pairs(x, y, ci=0.9)
    q = stats.norm.ppf(0.95)
    se = {
        "pearson": 1 / math.sqrt(9),
        "spearman": math.sqrt((1 + res["spearman"].coefficient ** 2 / 2) / 9),
        "kendall": math.sqrt(0.437 / 8),
    }
    for method, s in se.items():
        c = res[method]
        z = math.atanh(c.coefficient)
        assert c.interval == "fisher_z" and c.warning == ""
        assert (c.ci_low, c.ci_high) == pytest.approx((math.tanh(z - q * s), math.tanh(z + q * s)))
    # A perfect ranking gets the exact interval even with many models: never a degenerate one.
    perfect = correlate_pairs(np.arange(FEW_MODELS + 2.0), np.arange(FEW_MODELS + 2.0) ** 2)
    assert perfect["spearman"].interval == "copula" and perfect["spearman"].ci_low < 1.0 - 1e-3


def test_bootstrap_ci_matches_manual_percentiles_and_brackets_estimate() -> None:
    x, y = _data(n=15)
    res = correlate_pairs(x, y, methods=("pearson", "kendall"), interval="bootstrap", bootstrap=300, ci=0.9, seed=7)
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
        assert res[method].interval == "bootstrap"
        assert res[method].ci_low == pytest.approx(lo, abs=1e-9)
        assert res[method].ci_high == pytest.approx(hi, abs=1e-9)
        assert res[method].ci_low <= res[method].coefficient <= res[method].ci_high
        assert res[method].bootstrap_valid == len(boot)


def test_too_few_points_and_constant_input_are_reported_not_nan() -> None:
    res = correlate_pairs([0.1, 0.2], [0.3, 0.5])
    for c in res.values():
        assert not c.ok and c.status == "not_enough_points" and c.coefficient is None
        assert c.message == "not enough points (n=2, need ≥ 3)" and c.warning == ""
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
    with pytest.raises(ValueError, match="unknown interval method 'percentile'"):
        correlate_pairs([1, 2, 3], [1, 2, 4], interval="percentile")
