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
