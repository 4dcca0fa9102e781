"""Correlation of paired scores across models: coefficients, p-values and intervals that stay honest at small n.

For models m, ``x[m]`` is a metric on a synthetic set and ``y[m]`` the same metric on its
real counterpart. :func:`correlate_pairs` reports Pearson's r, Spearman's rho and Kendall's
tau-b, each with a two-sided p-value and a confidence interval chosen for the number of
models:

p-values
    With at most :data:`EXACT_P_MAX_N` models, the exact permutation distribution over all
    n! pairings (``scipy.stats.permutation_test``): a perfect ranking of 4 models has
    p = 2/24, never 0. With more models, scipy's ``pearsonr`` (t distribution),
    ``spearmanr`` (t approximation) and ``kendalltau`` (exact without ties when small).

intervals (``interval="auto"``)
    Below :data:`FEW_MODELS` models, and whenever the coefficient is at +-1: the interval
    obtained by inverting the exact test of the observed coefficient under a Gaussian
    copula (Monte Carlo, seeded). Rank statistics depend only on the copula, so this is
    free of assumptions on the marginals; the latent correlation rho is reported on each
    method's own scale (Pearson: rho; Spearman: 6/pi asin(rho/2); Kendall: 2/pi asin(rho)).
    It never collapses to a point: 3 models give nearly [-1, 1], a perfect ranking of 4
    models gives an interval reaching below 0 (in agreement with p = 2/24 > 0.05).
    From :data:`FEW_MODELS` models on: Fisher-z intervals, with standard errors
    1/sqrt(n-3) (Pearson), sqrt((1 + rho^2/2)/(n-3)) (Spearman, Bonett & Wright 2000,
    Psychometrika 65:23-28) and sqrt(0.437/(n-4)) (Kendall, Fieller, Hartley & Pearson
    1957, Biometrika 44:470-481). ``interval="bootstrap"`` gives the percentile interval
    over resampled models instead (degenerate for perfect rankings: shown for comparison).

Below :data:`FEW_MODELS` models every result carries a plain ``warning``. Undefined results
are never numbers: fewer than :data:`MIN_POINTS` points or a constant input give a
:class:`Correlation` whose ``status`` says why and whose ``coefficient`` is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

METHODS: tuple[str, ...] = ("pearson", "spearman", "kendall")
"""Supported correlation methods."""

SYMBOLS: dict[str, str] = {"pearson": "r", "spearman": "rho", "kendall": "tau"}
"""The conventional symbol of each method's coefficient."""

MIN_POINTS: int = 3
"""Fewest (x, y) points for which a correlation is reported."""

FEW_MODELS: int = 8
"""Below this many points a correlation carries a warning and gets the exact small-sample interval."""

EXACT_P_MAX_N: int = 8
"""Up to this many points the p-value comes from all n! pairings (8! = 40320)."""

INTERVALS: tuple[str, ...] = ("auto", "copula", "fisher_z", "bootstrap")
"""Confidence-interval methods of :func:`correlate_pairs`."""

COPULA_DRAWS: int = 4000
"""Monte Carlo samples per latent correlation in the copula test inversion."""


@dataclass
class Correlation:
    """One correlation coefficient with its interval and p-value (``None`` fields when undefined)."""

    method: str
    n: int
    status: str = "ok"
    coefficient: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    ci: float = 0.95
    interval: str = ""
    p_method: str = ""
    bootstrap: int = 0
    bootstrap_valid: int = 0
    message: str = ""
    warning: str = ""

    @property
    def ok(self) -> bool:
        """Whether the coefficient is defined."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


@dataclass
class CurvePoint:
    """Correlation statistics at one synthetic-set size over repeated random subsets."""

    size: int
    repeats: int
    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    valid: int
    values: list[float] = field(default_factory=list)


def few_models_warning(n: int) -> str:
    """The warning attached to correlations over 3 to :data:`FEW_MODELS` - 1 points ("" otherwise).

    Fewer than :data:`MIN_POINTS` points give no coefficient at all (the status says so).
    """
    if n >= FEW_MODELS or n < MIN_POINTS:
        return ""
    return (
        f"only {n} models: correlations over fewer than {FEW_MODELS} models are fragile "
        "(one model can flip the ranking); read the interval, not the coefficient"
    )


def as_values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """``values`` as a 1-D float64 array; a clear error naming ``name`` if not 1-D or not finite."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(
            f"{name} holds non-finite values at positions {bad.tolist()[:10]} ({arr[bad][:10].tolist()}); "
            "drop or fix those models before correlating"
        )
    return arr


def _rank_rows(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(a, axis=-1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of (B, n) arrays; NaN where a row is constant."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    num = (xc * yc).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def _kendall_rows(x: np.ndarray, y: np.ndarray, chunk_elems: int = 2_000_000) -> np.ndarray:
    """Kendall tau-b of each row pair of (B, n) arrays (same definition as scipy); NaN where undefined."""
    b, n = x.shape
    out = np.empty(b)
    step = max(1, chunk_elems // max(1, n * n))
    iu = np.triu_indices(n, k=1)
    for s in range(0, b, step):
        xs, ys = x[s : s + step], y[s : s + step]
        sx = np.sign(xs[:, :, None] - xs[:, None, :])[:, iu[0], iu[1]]
        sy = np.sign(ys[:, :, None] - ys[:, None, :])[:, iu[0], iu[1]]
        num = (sx * sy).sum(-1)
        den = np.sqrt(np.abs(sx).sum(-1) * np.abs(sy).sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + step] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def coefficients(method: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The coefficient of ``method`` for each row pair of (B, n) arrays (NaN where undefined)."""
    x, y = np.broadcast_arrays(np.atleast_2d(x), np.atleast_2d(y))
    if method == "pearson":
        return _pearson_rows(x, y)
    if method == "spearman":
        return _pearson_rows(_rank_rows(x), _rank_rows(y))
    if method == "kendall":
        return _kendall_rows(x, y)
    raise ValueError(f"unknown correlation method {method!r}; expected one of {METHODS}")


def p_value(method: str, x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """Two-sided p-value of no association and how it was computed (exact permutation up to 9 points)."""
    from scipy import stats

    n = x.size
    if n <= EXACT_P_MAX_N:
        # Spearman's rho is Pearson's r of the ranks, and permuting x permutes its ranks.
        xs, ys, inner = (_rank_rows(x), _rank_rows(y), "pearson") if method == "spearman" else (x, y, method)

        def statistic(xp: np.ndarray, axis: int = -1) -> np.ndarray:
            flat = np.moveaxis(np.asarray(xp), axis, -1)
            return coefficients(inner, flat.reshape(-1, n), ys[None]).reshape(flat.shape[:-1])

        res = stats.permutation_test(
            (xs,), statistic, permutation_type="pairings", vectorized=True, n_resamples=np.inf, alternative="two-sided"
        )
        return float(min(1.0, res.pvalue)), f"exact permutation ({math.factorial(n)} pairings)"
    fn = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}[method]
    label = {"pearson": "t distribution", "spearman": "t approximation", "kendall": "scipy kendalltau (auto)"}
    return float(fn(x, y)[1]), label[method]


def _latent_to_method(method: str, rho: float) -> float:
    if method == "spearman":
        return 6.0 / math.pi * math.asin(rho / 2.0)
    if method == "kendall":
        return 2.0 / math.pi * math.asin(rho)
    return rho


def copula_interval(
    method: str, coefficient: float, n: int, ci: float = 0.95, draws: int = COPULA_DRAWS, seed: int = 0
) -> tuple[float, float]:
    """Interval from inverting the exact test of ``coefficient`` under a Gaussian copula with n points.

    The bounds are the latent correlations rho at which observing a coefficient at least
    (at most) as large has probability (1 - ci)/2, found by bisection on Monte Carlo
    samples shared across rho (seeded), mapped to the method's own scale.
    """
    rng = np.random.default_rng(seed)
    z1, z2 = rng.standard_normal((2, draws, n))
    tol = 1e-9
    half = (1.0 - ci) / 2.0
    edge = 1.0 - 1e-9

    def sample(rho: float) -> np.ndarray:
        values = coefficients(method, z1, rho * z1 + math.sqrt(max(0.0, 1.0 - rho * rho)) * z2)
        return values[np.isfinite(values)]

    def p_at_least(rho: float) -> float:
        return float(np.mean(sample(rho) >= coefficient - tol))

    def p_at_most(rho: float) -> float:
        return float(np.mean(sample(rho) <= coefficient + tol))

    def crossing(tail: Any, increasing: bool) -> float:
        lo, hi = -edge, edge
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            above = tail(mid) > half
            if above == increasing:
                hi = mid
            else:
                lo = mid
        return 0.5 * (lo + hi)

    # P(stat >= observed) grows with rho: the lower bound is where it reaches (1 - ci)/2.
    low = -1.0 if p_at_least(-edge) > half else crossing(p_at_least, increasing=True)
    high = 1.0 if p_at_most(edge) > half else crossing(p_at_most, increasing=False)
    return _latent_to_method(method, low), _latent_to_method(method, high)


def fisher_z_interval(method: str, coefficient: float, n: int, ci: float = 0.95) -> tuple[float, float] | None:
    """Fisher-z interval (None when undefined: |coefficient| = 1, or n <= 3, Kendall n <= 4)."""
    from scipy.stats import norm

    if abs(coefficient) >= 1.0 or n <= (4 if method == "kendall" else 3):
        return None
    se = {
        "pearson": 1.0 / math.sqrt(n - 3),
        "spearman": math.sqrt((1.0 + coefficient**2 / 2.0) / (n - 3)),
        "kendall": math.sqrt(0.437 / (n - 4)),
    }[method]
    z, q = math.atanh(coefficient), float(norm.ppf(0.5 + ci / 2.0))
    return math.tanh(z - q * se), math.tanh(z + q * se)


def bootstrap_interval(
    method: str, x: np.ndarray, y: np.ndarray, resamples: int, ci: float, seed: int
) -> tuple[tuple[float, float] | None, int]:
    """Percentile interval over ``resamples`` resamples of the points with replacement, and the valid count."""
    n = x.size
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    boot = coefficients(method, x[idx], y[idx]) if resamples > 0 else np.empty(0)
    boot = boot[np.isfinite(boot)]
    if boot.size < 2:
        return None, int(boot.size)
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return (float(lo), float(hi)), int(boot.size)


def correlate_pairs(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    methods: Sequence[str] = METHODS,
    ci: float = 0.95,
    interval: str = "auto",
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Correlation]:
    """Correlation of paired scores ``x`` (synthetic) and ``y`` (real) by each method, with p-value and interval.

    Args:
        x, y: one value per model.
        methods: some of :data:`METHODS`.
        ci: confidence level of the interval.
        interval: ``"auto"`` (copula test inversion below :data:`FEW_MODELS` points or at
            |coefficient| = 1, Fisher-z otherwise), ``"copula"``, ``"fisher_z"`` or
            ``"bootstrap"`` (percentile, ``bootstrap`` resamples).
        bootstrap: resamples of the bootstrap interval.
        seed: seed of the Monte Carlo and bootstrap draws.
    """
    xa, ya = as_values(x, "x"), as_values(y, "y")
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must pair up one to one, got {xa.size} and {ya.size} values")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 resamples, got {bootstrap!r}")
    if interval not in INTERVALS:
        raise ValueError(f"unknown interval method {interval!r}; expected one of {INTERVALS}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown correlation method {m!r}; expected one of {METHODS}")
    n = int(xa.size)
    warning = few_models_warning(n)
    status, problem = "ok", ""
    if n < MIN_POINTS:
        status, problem = "not_enough_points", f"not enough points (n={n}, need ≥ {MIN_POINTS})"
    else:
        constant = [
            f"{name} is constant (all {n} values = {arr[0]:g})"
            for name, arr in (("x (synthetic)", xa), ("y (real)", ya))
            if np.ptp(arr) == 0
        ]
        if constant:
            status, problem = "constant_input", "; ".join(constant) + ": correlation undefined"
    if status != "ok":
        return {m: Correlation(method=m, n=n, status=status, ci=ci, message=problem, warning=warning) for m in methods}

    results: dict[str, Correlation] = {}
    for m in methods:
        coef = float(coefficients(m, xa, ya)[0])
        p, p_method = p_value(m, xa, ya)
        bounds: tuple[float, float] | None = None
        used, valid, msg = interval, 0, ""
        if interval == "bootstrap":
            bounds, valid = bootstrap_interval(m, xa, ya, bootstrap, ci, seed)
            if bounds is None and bootstrap > 0:
                msg = f"only {valid} of {bootstrap} bootstrap resamples were non-degenerate; no interval"
        else:
            if interval in ("auto", "fisher_z"):
                bounds = fisher_z_interval(m, coef, n, ci) if (interval == "fisher_z" or n >= FEW_MODELS) else None
                used = "fisher_z"
            if bounds is None and interval != "fisher_z":
                bounds, used = copula_interval(m, coef, n, ci, seed=seed), "copula"
            elif bounds is None:
                msg = f"no Fisher-z interval at n={n} with coefficient {coef:g}"
        if bounds is not None and bounds[1] - bounds[0] <= 1e-6:
            msg = (msg + "; " if msg else "") + "the interval is degenerate"
        results[m] = Correlation(
            method=m,
            n=n,
            coefficient=coef,
            ci_low=None if bounds is None else float(bounds[0]),
            ci_high=None if bounds is None else float(bounds[1]),
            p_value=p,
            ci=ci,
            interval=used,
            p_method=p_method,
            bootstrap=bootstrap if interval == "bootstrap" else 0,
            bootstrap_valid=valid,
            message=msg,
            warning=warning,
        )
    return results


def format_interval(low: float, high: float, digits: int = 3) -> str:
    """``[low, high]`` with at least ``digits`` decimals and as many more as it takes to tell the ends apart.

    An interval of width 0.0009 near 1 prints as ``[0.9991, 1.0000]``, never as ``[1.00, 1.00]``,
    which reads as a certainty it is not; a single point is called undefined.
    """
    low, high = float(low), float(high)
    if low == high:
        return f"undefined (the interval is a single point, {low:g})"
    width = abs(high - low)
    places = max(digits, math.ceil(-math.log10(width)) if width < 1 else 0)
    while places < 12 and f"{low:.{places}f}" == f"{high:.{places}f}":
        places += 1
    return f"[{low:.{places}f}, {high:.{places}f}]"


def format_correlation(c: Correlation) -> str:
    """Human-readable one-liner, e.g. ``spearman rho=1.000 [-0.462, 1.000] p=0.0833 n=4``."""
    if not c.ok:
        return f"{c.method}: {c.message}"
    ci = f" {format_interval(c.ci_low, c.ci_high)}" if c.ci_low is not None and c.ci_high is not None else ""
    return f"{c.method} {SYMBOLS[c.method]}={c.coefficient:.3f}{ci} p={c.p_value:.3g} n={c.n}"


__all__ = [
    "COPULA_DRAWS",
    "CurvePoint",
    "EXACT_P_MAX_N",
    "FEW_MODELS",
    "INTERVALS",
    "METHODS",
    "MIN_POINTS",
    "SYMBOLS",
    "Correlation",
    "as_values",
    "bootstrap_interval",
    "coefficients",
    "copula_interval",
    "correlate_pairs",
    "few_models_warning",
    "fisher_z_interval",
    "format_correlation",
    "format_interval",
    "p_value",
]
