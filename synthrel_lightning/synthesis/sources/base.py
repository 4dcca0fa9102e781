"""The outlier-source protocol: ``sample(rng) -> OutlierEntry | None``, and the feathered alpha sources share."""

from __future__ import annotations

import abc

import numpy as np

from synthrel_lightning.synthesis.bank import OutlierEntry

__all__ = ["OutlierSource", "feathered_alpha"]


class OutlierSource(abc.ABC):
    """Base of everything that draws outliers from a NumPy generator.

    Subclass it (and implement :meth:`sample`) to plug a new source into
    :class:`~synthrel_lightning.synthesis.OutlierMixer` or :func:`~synthrel_lightning.synthesis.fill_bank`
    from Python or YAML.
    """

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> OutlierEntry | None:
        """One outlier (or None when the source is empty)."""


def feathered_alpha(mask: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian-feathered uint8 alpha from a binary/uint8 mask (``radius`` <= 0: the mask as is)."""
    from PIL import Image, ImageFilter

    if radius <= 0:
        return mask.astype(np.uint8)
    img = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.uint8)
