"""Figure plumbing shared by every plot: a headless figure, atomic multi-format saving, RGB rendering.

matplotlib is imported inside the functions with the non-interactive Agg backend, so
importing this module stays cheap and works on headless machines. Figures are built with
``matplotlib.figure.Figure`` (no pyplot), so nothing leaks across many calls.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synthrel_lightning.atomic import atomic_save_png, atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

DEFAULT_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
"""Formats :func:`save_figure` writes by default: a raster for quick looks, vectors for reports."""

DEFAULT_DPI = 200
"""Resolution of saved raster figures."""


def new_figure(figsize: tuple[float, float], dpi: int = 100) -> Figure:
    """A matplotlib ``Figure`` with a constrained layout, on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi, layout="constrained")


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 RGB array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(
    fig: Figure, path: str | Path, formats: Sequence[str] = DEFAULT_FORMATS, dpi: int = DEFAULT_DPI, **kwargs: Any
) -> list[Path]:
    """Save ``fig`` atomically at ``path`` in each of ``formats`` (suffix replaced); returns the written paths.

    The first format keeps ``path``'s own suffix when it has one of the formats
    (``plots/scatter.png`` writes ``scatter.png``, ``scatter.svg``, ``scatter.pdf``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    unknown = sorted(set(formats) - {"png", "svg", "pdf", "jpg", "eps"})
    if unknown or not formats:
        raise ValueError(f"save_figure: formats must be among png, svg, pdf, jpg, eps; got {list(formats)}")
    FigureCanvasAgg(fig)
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        written.append(atomic_write(target, functools.partial(fig.savefig, format=fmt, dpi=dpi, **kwargs)))
    return written


def save_rgb_png(image: np.ndarray, path: str | Path) -> Path:
    """Save an (H, W, 3) uint8 array as PNG atomically."""
    return atomic_save_png(path, image)


__all__ = ["DEFAULT_DPI", "DEFAULT_FORMATS", "figure_to_array", "new_figure", "save_figure", "save_rgb_png"]
