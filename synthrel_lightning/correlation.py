"""Correlation statistics for the proxy-validity claim: do synthetic-set scores predict real ones?

For a set of models m, ``x[m]`` is a metric on a synthetic set and ``y[m]`` the same
metric on its real counterpart. :func:`correlate_pairs` reports Pearson, Spearman and
Kendall (tau-b) coefficients with scipy p-values and bootstrap percentile confidence
intervals (models resampled with replacement). :func:`subsample_curve` answers "how
many synthetic images are enough?" by recomputing the synthetic metric exactly on
random subsets of frames from per-frame additive statistics.

Undefined results are never reported as numbers: fewer than 3 points or a constant
input give a :class:`Correlation` whose ``status`` says why and whose ``coefficient``
is ``None``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthrel_lightning.atomic import atomic_write_json

METHODS: tuple[str, ...] = ("pearson", "spearman", "kendall")
"""Supported correlation methods."""

MIN_POINTS: int = 3
"""Fewest (x, y) points for which a correlation is reported."""


@dataclass
class Correlation:
    """One correlation coefficient with its bootstrap CI and p-value (``None`` fields when undefined)."""

    method: str
    n: int
    status: str = "ok"
    coefficient: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    ci: float = 0.95
    bootstrap: int = 0
    bootstrap_valid: int = 0
    message: str = ""

    @property
    def ok(self) -> bool:
        """Whether the coefficient is defined."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
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


def _coefficients(method: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if method == "pearson":
        return _pearson_rows(x, y)
    if method == "spearman":
        return _pearson_rows(_rank_rows(x), _rank_rows(y))
    if method == "kendall":
        return _kendall_rows(x, y)
    raise ValueError(f"unknown correlation method {method!r}; expected one of {METHODS}")


def _p_value(method: str, x: np.ndarray, y: np.ndarray) -> float:
    from scipy import stats

    fn = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}[method]
    return float(fn(x, y)[1])


def correlate_pairs(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    methods: Sequence[str] = METHODS,
    bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Correlation]:
    """Correlation of paired scores ``x`` (synthetic) and ``y`` (real) by each method, with bootstrap CIs.

    The CI is the percentile interval of the coefficient over ``bootstrap`` resamples of
    the points with replacement; resamples where the coefficient is undefined (all
    drawn points tied) are dropped and counted in ``bootstrap_valid``. The p-value is
    scipy's (two-sided, null of no association).
    """
    xa, ya = _as_1d(x, "x"), _as_1d(y, "y")
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must pair up one to one, got {xa.size} and {ya.size} values")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 resamples, got {bootstrap!r}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown correlation method {m!r}; expected one of {METHODS}")
    n = int(xa.size)
    results: dict[str, Correlation] = {}
    problem = ""
    status = "ok"
    if n < MIN_POINTS:
        status, problem = "not_enough_points", f"not enough points (n={n}, need ≥ {MIN_POINTS})"
    else:
        constant = [
            f"{name} is constant (all {n} values = {arr[0]:g})"
            for name, arr in (("x (synthetic)", xa), ("y (real)", ya))
            if np.ptp(arr) == 0
        ]
        if constant:
            status = "constant_input"
            problem = "; ".join(constant) + ": correlation undefined"
    if status != "ok":
        return {
            m: Correlation(method=m, n=n, status=status, ci=ci, bootstrap=bootstrap, message=problem) for m in methods
        }

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(bootstrap, n)) if bootstrap > 0 else np.zeros((0, n), dtype=np.int64)
    alpha = (1.0 - ci) / 2.0
    for m in methods:
        coef = float(_coefficients(m, xa[None], ya[None])[0])
        boot = _coefficients(m, xa[idx], ya[idx]) if bootstrap > 0 else np.empty(0)
        boot = boot[np.isfinite(boot)]
        lo = hi = None
        msg = ""
        if boot.size >= 2:
            lo, hi = (float(v) for v in np.quantile(boot, [alpha, 1.0 - alpha]))
        elif bootstrap > 0:
            msg = f"only {boot.size} of {bootstrap} bootstrap resamples were non-degenerate; no CI"
        results[m] = Correlation(
            method=m,
            n=n,
            coefficient=coef,
            ci_low=lo,
            ci_high=hi,
            p_value=_p_value(m, xa, ya),
            ci=ci,
            bootstrap=bootstrap,
            bootstrap_valid=int(boot.size),
            message=msg,
        )
    return results


def format_correlation(c: Correlation) -> str:
    """Human-readable one-liner, e.g. ``pearson r=0.82 [0.61, 0.93] p=0.0012 n=12``."""
    if not c.ok:
        return f"{c.method}: {c.message}"
    ci = f" [{c.ci_low:.3f}, {c.ci_high:.3f}]" if c.ci_low is not None else ""
    return f"{c.method} {c.coefficient:.3f}{ci} p={c.p_value:.3g} n={c.n}"


# ---------------------------------------------------------------------------
# Metric values from additive per-frame statistics (used by the subsampling curve)


def miou_from_confusion(confusion: np.ndarray) -> float:
    """mIoU (over classes present in prediction or target) from a (K, K) confusion matrix, rows = target."""
    conf = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    if not present.any():
        return float("nan")
    return float((tp[present] / union[present]).mean())


def ece_from_bins(bins: np.ndarray) -> float:
    """Top-1 ECE from (3, B) per-bin sums: pixel count, summed confidence, summed correctness."""
    b = np.asarray(bins, dtype=np.float64)
    total = b[0].sum()
    if total <= 0:
        return float("nan")
    return float(np.abs(b[1] - b[2]).sum() / total)


def pixel_ood_from_histograms(hist: np.ndarray) -> dict[str, float]:
    """AP, AUROC and FPR95 from (2, B) histograms of OOD scores (row 0 negatives, row 1 positives, bins ascending).

    Thresholds run over bin edges in descending order, so the values are the
    dataset-level SMIYC definitions up to the bin resolution.
    """
    h = np.asarray(hist, dtype=np.float64)
    neg, pos = h[0][::-1], h[1][::-1]
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    p_total, n_total = tp[-1], fp[-1]
    if p_total <= 0 or n_total <= 0:
        return {"ap": float("nan"), "auroc": float("nan"), "fpr95": float("nan")}
    tpr, fpr = tp / p_total, fp / n_total
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 1.0)
    recall_prev = np.concatenate([[0.0], tpr[:-1]])
    ap = float(((tpr - recall_prev) * precision).sum())
    auroc = float(np.trapezoid(np.concatenate([[0.0], tpr]), np.concatenate([[0.0], fpr])))
    hit = np.flatnonzero(tpr >= 0.95)
    fpr95 = float(fpr[hit[0]]) if hit.size else 1.0
    return {"ap": ap, "auroc": auroc, "fpr95": fpr95}


FrameReducer = Callable[[np.ndarray], float]
"""Maps the sum of per-frame statistics over a subset of frames to the metric value."""


def reducer_for(metric: str) -> FrameReducer:
    """The reducer that turns summed per-frame statistics into ``metric`` (miou, ece, ap, auroc, fpr95)."""
    if metric == "miou":
        return miou_from_confusion
    if metric == "ece":
        return ece_from_bins
    if metric in ("ap", "auroc", "fpr95"):
        return lambda h: pixel_ood_from_histograms(h)[metric]
    raise ValueError(f"no per-frame reducer for metric {metric!r}; supported: miou, ece, ap, auroc, fpr95")


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


def subsample_curve(
    frame_stats: Sequence[np.ndarray],
    real: Sequence[float],
    reduce: FrameReducer | str,
    sizes: Sequence[int] | None = None,
    repeats: int = 20,
    method: str = "pearson",
    band: float = 0.9,
    seed: int = 0,
) -> list[CurvePoint]:
    """Correlation between synthetic and real scores as a function of the number of synthetic frames.

    ``frame_stats[m]`` is an (F, ...) array of additive per-frame sufficient statistics of
    model m on the synthetic set (confusion matrices, calibration-bin sums, OOD score
    histograms); all models must have seen the same F frames in the same order. For each
    size k and repeat, one random subset of k frames is drawn (shared by every model, as
    if the synthetic set had only those frames), the metric is recomputed *exactly* from
    the statistics summed over the subset (dataset-level, not an average of per-frame
    scores), and correlated with ``real`` across models. Each point reports the mean,
    std and central ``band`` interval of the coefficient over the repeats.
    """
    reducer = reducer_for(reduce) if isinstance(reduce, str) else reduce
    real_a = _as_1d(real, "real")
    if len(frame_stats) != real_a.size:
        raise ValueError(f"frame_stats has {len(frame_stats)} models but real has {real_a.size} values")
    if real_a.size < MIN_POINTS:
        raise ValueError(f"not enough models for a correlation (n={real_a.size}, need ≥ {MIN_POINTS})")
    stats = [np.asarray(s, dtype=np.float64) for s in frame_stats]
    n_frames = stats[0].shape[0]
    for i, s in enumerate(stats):
        if s.shape != stats[0].shape:
            raise ValueError(
                f"model {i} has per-frame statistics of shape {s.shape}, model 0 has {stats[0].shape}; "
                "every model must be evaluated on the same frames"
            )
    if n_frames < 1:
        raise ValueError("frame_stats holds no frames")
    if sizes is None:
        sizes = sorted({max(1, int(round(n_frames * f))) for f in (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)})
    bad = [k for k in sizes if not 1 <= int(k) <= n_frames]
    if bad:
        raise ValueError(f"subset sizes {bad} are outside 1..{n_frames} (the number of synthetic frames)")
    rng = np.random.default_rng(seed)
    alpha = (1.0 - band) / 2.0
    curve: list[CurvePoint] = []
    for k in sizes:
        k = int(k)
        reps = 1 if k == n_frames else repeats
        values: list[float] = []
        for _ in range(reps):
            subset = rng.choice(n_frames, size=k, replace=False)
            xs = np.array([reducer(s[subset].sum(0)) for s in stats])
            if not np.all(np.isfinite(xs)) or np.ptp(xs) == 0:
                continue
            values.append(float(_coefficients(method, xs[None], real_a[None])[0]))
        vals = np.asarray([v for v in values if math.isfinite(v)])
        if vals.size:
            lo, hi = np.quantile(vals, [alpha, 1.0 - alpha])
            curve.append(
                CurvePoint(
                    k, reps, float(vals.mean()), float(vals.std()), float(lo), float(hi), int(vals.size), vals.tolist()
                )
            )
        else:
            curve.append(CurvePoint(k, reps, None, None, None, None, 0, []))
    return curve


# ---------------------------------------------------------------------------
# Histories of (synthetic, real) metric pairs, e.g. from MetricCorrelation over sweep runs


def pair_key(synthetic: str, real: str, metric: str) -> str:
    """Key naming one (synthetic set, real set, metric) pair: ``synthetic~real/metric``."""
    return f"{synthetic}~{real}/{metric}"


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON to ``path`` atomically (temporary file in the same folder + os.replace)."""
    atomic_write_json(path, payload)


def pool_histories(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Concatenate the records of several MetricCorrelation history files (e.g. all runs of a sweep)."""
    records: list[dict[str, Any]] = []
    for p in paths:
        p = Path(p)
        try:
            payload = json.loads(p.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"history file {p} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"history file {p} is not valid JSON: {e}") from None
        recs = payload.get("records") if isinstance(payload, dict) else None
        if not isinstance(recs, list):
            raise ValueError(f"history file {p} has no 'records' list; expected a file written by MetricCorrelation")
        for r in recs:
            missing = {"synthetic", "real", "metric", "x", "y"} - set(r)
            if missing:
                raise ValueError(f"history file {p}: record {r!r} lacks {sorted(missing)}")
            records.append({**r, "source": str(p)})
    return records


def correlate_records(
    records: Sequence[Mapping[str, Any]],
    methods: Sequence[str] = METHODS,
    bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Correlation]]:
    """Correlations per pair key over history records (each with synthetic, real, metric, x, y)."""
    grouped: dict[str, tuple[list[float], list[float]]] = {}
    for r in records:
        xs, ys = grouped.setdefault(pair_key(r["synthetic"], r["real"], r["metric"]), ([], []))
        xs.append(float(r["x"]))
        ys.append(float(r["y"]))
    return {k: correlate_pairs(xs, ys, methods, bootstrap, ci, seed) for k, (xs, ys) in grouped.items()}
