"""How many synthetic frames are enough? The correlation as a function of the synthetic set's size.

:func:`subsample_curve` recomputes the synthetic metric exactly (dataset level) on random
subsets of frames from per-frame additive statistics and correlates it with the real
metric across models; :func:`subsampling_outputs` does so for every pair of a study from
the saved ``frame_stats/<model>.npz`` files and writes ``subsample.json`` and the curve plots.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.correlation.frame_statistics import (
    FRAME_REDUCERS,
    FrameReducer,
    load_frame_stats,
    reducer_for,
)
from synthrel_lightning.correlation.pairs import Pair, pair_key, slug
from synthrel_lightning.correlation.results import Metrics
from synthrel_lightning.correlation.statistics import (
    MIN_POINTS,
    CurvePoint,
    as_values,
    coefficients,
    few_models_warning,
)

log = logging.getLogger(__name__)


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
    real_a = as_values(real, "real")
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
            values.append(float(coefficients(method, xs, real_a)[0]))
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


def subsampling_outputs(
    results: Mapping[str, Metrics],
    pairs: Sequence[Pair],
    output_dir: str | Path,
    sizes: Sequence[int] | None = None,
    repeats: int = 20,
    method: str = "pearson",
    seed: int = 0,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Subsampling curves from ``frame_stats/<model>.npz`` -> subsample.json and curve plots; returns the rows."""
    out = Path(output_dir)
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        for metric in pair.metrics:
            key = pair_key(pair.synthetic, pair.real, metric)
            if metric not in FRAME_REDUCERS:
                rows.append(
                    {
                        "pair": key,
                        "status": "no_frame_statistics",
                        "message": f"{metric} is not recomputable from per-frame statistics "
                        f"(those are: {', '.join(FRAME_REDUCERS)}); no subsampling curve",
                    }
                )
                continue
            per_model: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for model, m in results.items():
                y = m.get(pair.real, {}).get(metric)
                loaded = load_frame_stats(out / "frame_stats" / f"{slug(model)}.npz", pair.synthetic, metric)
                if loaded is not None and y is not None and math.isfinite(y):
                    per_model[model] = loaded
            if len(per_model) < MIN_POINTS:
                rows.append(
                    {
                        "pair": key,
                        "status": "not_enough_points",
                        "message": f"per-frame statistics for {len(per_model)} models (need ≥ {MIN_POINTS})",
                    }
                )
                continue
            common = sorted(set.intersection(*(set(n.tolist()) for n, _ in per_model.values())))
            if not common:
                rows.append(
                    {"pair": key, "status": "no_common_frames", "message": "models saw no common synthetic frames"}
                )
                continue
            stats, real = [], []
            for model, (names, arr) in per_model.items():
                index = {n: i for i, n in enumerate(names.tolist())}
                stats.append(arr[[index[n] for n in common]])
                real.append(results[model][pair.real][metric])
            n = len(common)
            use_sizes = [s for s in sizes if s <= n] if sizes else None
            curve = subsample_curve(stats, real, metric, use_sizes, repeats, method, seed=seed)
            plot_files: list[str] = []
            if plots:
                from synthrel_lightning.correlation.plots import curve_figure
                from synthrel_lightning.figures import save_figure

                fig = curve_figure(
                    curve,
                    method,
                    models=len(per_model),
                    xlabel=f"{pair.synthetic} frames used ({metric} recomputed per subset)",
                    ylabel=f"{method} correlation with {pair.real} {metric}",
                    title=f"{key}: correlation vs synthetic frames",
                )
                plot_files = [str(p) for p in save_figure(fig, out / "plots" / f"subsample_{slug(key)}.png")]
            rows.append(
                {
                    "pair": key,
                    "status": "ok",
                    "method": method,
                    "frames": n,
                    "models": list(per_model),
                    "warning": few_models_warning(len(per_model)),
                    "curve": [asdict(p) for p in curve],
                    "plot": plot_files[0] if plot_files else None,
                    "plot_files": plot_files,
                    "full_set_from_frames": [reducer_for(metric)(s.sum(0)) for s in stats],
                    "full_set_logged": [results[m][pair.synthetic].get(metric) for m in per_model],
                }
            )
    atomic_write_json(out / "subsample.json", {"curves": rows})
    return rows


__all__ = ["CurvePoint", "subsample_curve", "subsampling_outputs"]
