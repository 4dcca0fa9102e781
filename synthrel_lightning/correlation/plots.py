"""Figures of a correlation study: synthetic-vs-real scatter plots and subsampling curves, labelled with their numbers.

Built on :mod:`synthrel_lightning.figures` (headless matplotlib, imported inside the
functions); save them with :func:`synthrel_lightning.figures.save_figure` (PNG, SVG, PDF).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from synthrel_lightning.correlation.statistics import FEW_MODELS, SYMBOLS, format_interval
from synthrel_lightning.figures import new_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from synthrel_lightning.correlation.statistics import Correlation, CurvePoint

_MATH = {"r": "r", "rho": r"\rho", "tau": r"\tau"}
_INTERVAL_NAMES = {"copula": "copula test inversion", "fisher_z": "Fisher z", "bootstrap": "bootstrap"}


def correlation_label(c: Correlation) -> str:
    """One legend line, e.g. ``ρ = 0.80, 95% CI [0.12, 0.97] (Fisher z), p = 0.017``."""
    symbol = f"${_MATH[SYMBOLS[c.method]]}$"
    if not c.ok:
        return f"{symbol}: undefined ({c.status.replace('_', ' ')})"
    text = f"{symbol} = {c.coefficient:.2f}"
    if c.ci_low is not None and c.ci_high is not None:
        interval = format_interval(c.ci_low, c.ci_high, digits=2)
        text += f", {c.ci:.0%} CI {interval} ({_INTERVAL_NAMES.get(c.interval, c.interval)})"
    return text + f", p = {c.p_value:.2g}"


def scatter_figure(
    x: Sequence[float],
    y: Sequence[float],
    labels: Sequence[str] | None = None,
    correlations: Mapping[str, Correlation] | None = None,
    xlabel: str = "synthetic",
    ylabel: str = "real",
    title: str = "",
) -> Figure:
    """Synthetic (x) against real (y) scores, one point per model, with a least-squares line, r, rho, tau, CIs and n."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    fig = new_figure((6.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(xa, ya, s=28, color="tab:blue", zorder=3)
    if labels is not None:
        for xi, yi, name in zip(xa, ya, labels):
            ax.annotate(str(name), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if xa.size >= 2 and np.ptp(xa) > 0:
        slope, intercept = np.polyfit(xa, ya, 1)
        grid = np.linspace(xa.min(), xa.max(), 50)
        ax.plot(grid, slope * grid + intercept, color="tab:red", lw=1.2, label="least squares")
        ax.legend(fontsize=7, loc="lower right")
    lines = [f"n = {xa.size} models"] + [correlation_label(c) for c in (correlations or {}).values()]
    if xa.size < FEW_MODELS:
        lines.append(f"fewer than {FEW_MODELS} models: wide intervals, fragile ranking")
    ax.text(
        0.02,
        0.98,
        "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        fontsize=7,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85},
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title or f'{ylabel} vs {xlabel}'} (n={xa.size})", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def curve_figure(
    curve: Sequence[CurvePoint],
    method: str = "pearson",
    title: str = "",
    models: int | None = None,
    xlabel: str = "synthetic frames used",
    ylabel: str | None = None,
    band: float = 0.9,
) -> Figure:
    """Correlation (mean and central ``band`` over random subsets) against the number of synthetic frames."""
    fig = new_figure((6.0, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    pts = [p for p in curve if p.mean is not None]  # a point has its mean, low and high, or none of them
    if pts:
        sizes = [p.size for p in pts]
        symbol = f"${_MATH[SYMBOLS.get(method, 'r')]}$"
        means = [p.mean for p in pts if p.mean is not None]
        ax.plot(sizes, means, marker="o", color="tab:blue", label=f"mean {method} {symbol}")
        ax.fill_between(
            sizes,
            [p.low for p in pts if p.low is not None],
            [p.high for p in pts if p.high is not None],
            alpha=0.25,
            color="tab:blue",
            label=f"central {band:.0%} over random subsets ({max(p.repeats for p in pts)} per size)",
        )
        last = pts[-1]
        ax.annotate(
            f"{last.mean:.2f}",
            (last.size, last.mean),
            textcoords="offset points",
            xytext=(-4, -14),
            ha="right",
            fontsize=8,
        )
        ax.legend(fontsize=8, loc="lower right")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or f"{method} correlation with real")
    ax.set_ylim(-1.05, 1.05)
    suffix = f" (n={models} models)" if models is not None else ""
    ax.set_title(f"{title}{suffix}", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


__all__ = ["correlation_label", "curve_figure", "scatter_figure"]
