"""Figures of the study report: per-pair scatter (unfiltered beside QC-filtered) and calibration before/after."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["calibration_figure", "pair_scatter_figure"]


def _title(row: Mapping[str, Any] | None, label: str) -> str:
    if not row or row.get("coefficient") is None:
        return f"{label}: no coefficient"
    return f"{label}: r = {row['coefficient']:.3f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}] (n = {row['n']})"


def pair_scatter_figure(
    results: Mapping[str, Mapping[str, Mapping[str, float]]],
    panels: Sequence[tuple[str, str, str, Mapping[str, Any] | None, str]],
    path: Path,
) -> Path:
    """One panel per (synthetic set, real set, metric, Pearson row, label): models as labelled points.

    The panel's title carries the coefficient and its confidence interval from the row.
    """
    from matplotlib.figure import Figure

    from synthrel_lightning.figures import save_figure

    fig = Figure(figsize=(4.6 * len(panels), 4.0), constrained_layout=True)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (synthetic, real, metric, row, label) in zip(axes, panels):
        xs, ys, names = [], [], []
        for model, m in results.items():
            x, y = m.get(synthetic, {}).get(metric), m.get(real, {}).get(metric)
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
                xs.append(x)
                ys.append(y)
                names.append(model)
        ax.scatter(xs, ys, s=28, color="tab:blue" if "@" not in synthetic else "tab:green")
        for x, y, n in zip(xs, ys, names):
            ax.annotate(n, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if len(xs) >= 2 and len(set(xs)) > 1:
            import numpy as np

            slope, intercept = np.polyfit(xs, ys, 1)
            grid = np.linspace(min(xs), max(xs), 10)
            ax.plot(grid, slope * grid + intercept, color="grey", lw=1, ls="--")
        ax.set_xlabel(f"{synthetic} {metric}", fontsize=8)
        ax.set_ylabel(f"{real} {metric}", fontsize=8)
        ax.set_title(_title(row, label), fontsize=8)
        ax.tick_params(labelsize=7)
    return save_figure(fig, path, formats=("png",))[0]


def calibration_figure(rows: Sequence[Mapping[str, Any]], pair: str, method: str, path: Path) -> Path:
    """Real-domain ECE per model at T = 1, at the synthetic T, the source T and the oracle T."""
    import numpy as np
    from matplotlib.figure import Figure

    from synthrel_lightning.figures import save_figure

    chosen = [r for r in rows if r["pair"] == pair and r["method"] == method]
    models = [r["model"] for r in chosen]
    series = [("ece_before", "T = 1"), ("ece_syn", "T synthetic"), ("ece_src", "T source"), ("ece_oracle", "T oracle")]
    fig = Figure(figsize=(max(4.0, 0.9 * len(models) + 2), 3.4), constrained_layout=True)
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(len(models))
    for k, (key, label) in enumerate(series):
        vals = [np.nan if r.get(key) is None else float(r[key]) for r in chosen]
        ax.bar(x + (k - 1.5) * width, vals, width, label=label)
    ax.set_xticks(x, models, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("ECE on the real set", fontsize=8)
    ax.set_title(f"{pair} ({method}): calibration before/after per model", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path, formats=("png",))[0]
