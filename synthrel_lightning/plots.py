"""Figures of the evaluation: ROC and precision-recall curves, and figure plumbing.

matplotlib is imported inside the functions, with the non-interactive Agg backend, so
importing this module stays cheap and works on headless machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synthrel_lightning.atomic import atomic_save_png, atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


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


def roc_pr_figure(curves: dict[str, Any], title: str | None = None) -> Figure:
    """ROC and precision-recall curves side by side (from ``PixelOODMetrics.curves()``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    ax_roc, ax_pr = fig.subplots(1, 2)
    ax_roc.plot(np.asarray(curves["fpr"]), np.asarray(curves["tpr"]), color="tab:blue")
    ax_roc.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax_roc.axhline(0.95, color="tab:red", linewidth=0.8, linestyle=":")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    ax_pr.plot(np.asarray(curves["recall"]), np.asarray(curves["precision"]), color="tab:orange")
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title="precision-recall")
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
