"""The typed carriers of the data pipeline: one :class:`Sample` per frame, one :class:`Batch` per collated batch.

Every dataset of :mod:`synthrel_lightning.data` yields a ``Sample`` and every DataModule
loader yields a ``Batch``. Raw samples (before the transform) hold NumPy arrays
(``image`` uint8 (H, W, 3), ``label``/``ood`` uint8 (H, W)); transformed samples hold
tensors (``image`` float32 (3, H, W) normalised, ``label``/``ood`` int64 (H, W)). A transform
built with ``output="uint8"`` leaves ``image`` as uint8 (3, H, W) for normalisation on the
device (:func:`~synthrel_lightning.data.transforms.normalize_images`; the DataModules do it
in ``on_after_batch_transfer``).
"""

from __future__ import annotations

from typing import NamedTuple, TypedDict

import numpy as np
from torch import Tensor
from typing_extensions import NotRequired

__all__ = ["Sample", "Batch", "SampleKey"]


class Sample(TypedDict):
    """One frame.

    Keys: ``image`` (RGB), ``label`` (Cityscapes train ids 0..18, 254 OOD object, 255 void),
    ``ood`` (0 in-distribution, 1 OOD, 255 void) and ``name`` (a stable frame id, unique in
    its dataset, usable as a relative file name).
    """

    image: Tensor | np.ndarray
    label: Tensor | np.ndarray
    ood: Tensor | np.ndarray
    name: str


class Batch(TypedDict):
    """A collated batch of transformed samples.

    ``image`` (B, 3, H, W) float32 (uint8 from a transform with ``output="uint8"``, until
    normalised on the device), ``label``/``ood`` (B, H, W) int64, ``name`` the B frame
    names. When frames of different sizes share a batch they are padded at the bottom and
    right (image 0 = the normalised mean colour, ``label``/``ood`` void 255) and ``size``
    (B, 2) holds every frame's own (height, width): ``image[i, :, :h, :w]`` is frame ``i``.
    """

    image: Tensor
    label: Tensor
    ood: Tensor
    name: list[str]
    size: NotRequired[Tensor]


class SampleKey(NamedTuple):
    """What an epoch-keyed sampler yields: the dataset ``index`` to read, drawn for ``epoch``.

    Datasets wrapped by the DataModules accept it in ``__getitem__`` and key every random
    choice (outliers, augmentation) by ``(seed, epoch, index)``.
    """

    epoch: int
    # The field shadows tuple.index on purpose (key.index reads the dataset index); typeshed types the method.
    index: int  # type: ignore[assignment]
