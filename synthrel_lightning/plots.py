"""Figures for the correlation workflow: synthetic-vs-real scatter plots and subsampling curves.

matplotlib is imported inside the functions, with the non-interactive Agg backend, so
importing this module stays cheap and works on headless machines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synthrel_lightning.atomic import atomic_save_png, atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from synthrel_lightning.correlation import Correlation, CurvePoint


def _figure(figsize: tuple[float, float]) -> Figure:
    # Figure() without pyplot keeps no global state (no leaked figures across many calls).
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=100, layout="constrained")


def scatter_figure(
    x: Sequence[float],
    y: Sequence[float],
    labels: Sequence[str] | None = None,
    correlations: Mapping[str, Correlation] | None = None,
    xlabel: str = "synthetic",
    ylabel: str = "real",
    title: str = "",
) -> Figure:
    """Scatter of synthetic (x) against real (y) scores, one point per model, with a least-squares line and r in the legend."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    fig = _figure((5.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(xa, ya, s=28, color="tab:blue", zorder=3)
    if labels is not None:
        for xi, yi, name in zip(xa, ya, labels):
            ax.annotate(str(name), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if xa.size >= 2 and np.ptp(xa) > 0:
        slope, intercept = np.polyfit(xa, ya, 1)
        grid = np.linspace(xa.min(), xa.max(), 50)
        ax.plot(grid, slope * grid + intercept, color="tab:red", lw=1.2, label="least squares")
    lines = []
    for c in (correlations or {}).values():
        if c.ok:
            ci = f" [{c.ci_low:.2f}, {c.ci_high:.2f}]" if c.ci_low is not None else ""
            lines.append(f"{c.method} {c.coefficient:.2f}{ci}")
        else:
            lines.append(f"{c.method}: {c.message}")
    if lines:
        ax.text(
            0.02,
            0.98,
            "\n".join(lines),
            transform=ax.transAxes,
            va="top",
            fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} vs {xlabel} (n={xa.size})", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def curve_figure(curve: Sequence[CurvePoint], method: str = "pearson", title: str = "") -> Figure:
    """Correlation (mean and central band over random subsets) against the number of synthetic frames."""
    fig = _figure((5.0, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    pts = [p for p in curve if p.mean is not None]
    if pts:
        sizes = [p.size for p in pts]
        ax.plot(sizes, [p.mean for p in pts], marker="o", color="tab:blue", label=f"mean {method}")
        ax.fill_between(
            sizes, [p.low for p in pts], [p.high for p in pts], alpha=0.25, color="tab:blue", label="band over subsets"
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("synthetic frames used")
    ax.set_ylabel(f"{method} correlation with real")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 RGB array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: str | Path, **kwargs: Any) -> Path:
    """Save a figure as PNG atomically (temporary file + os.replace)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", **kwargs))


def save_rgb_png(image: np.ndarray, path: str | Path) -> Path:
    """Save an (H, W, 3) uint8 array as PNG atomically."""
    return atomic_save_png(path, image)
