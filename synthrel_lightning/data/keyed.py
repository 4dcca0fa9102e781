"""A dataset view whose random draws (outliers, augmentation) are keyed by (seed, epoch, sample index)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from synthrel_lightning.data.sample import Sample, SampleKey
from synthrel_lightning.seeding import derive_seed

__all__ = ["KeyedDataset", "Mixer", "seeded_global_rngs"]

Transform = Callable[[Sample], Sample]


class Mixer(Protocol):
    """What mixes outliers into a raw sample, drawing from ``(its seed, epoch, index)`` alone.

    The sample is a raw :class:`~synthrel_lightning.data.sample.Sample`; mixers live below the data
    package (:class:`~synthrel_lightning.synthesis.mixing.OutlierMixer`) and see it as a plain dict.
    """

    def __call__(self, sample: Any, index: int, epoch: int = 0) -> Any: ...


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global generators with ``seed`` for the block, then restore them."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class KeyedDataset(Dataset[Sample]):
    """``base`` samples, optionally mixed with outliers, then transformed, each draw keyed by (seed, epoch, index).

    ``dataset[SampleKey(epoch, index)]`` (what :class:`~synthrel_lightning.data.sampler.EpochSampler`
    yields) uses that epoch; ``dataset[index]`` uses :attr:`epoch` (see :meth:`set_epoch`). The
    transform receives ``seed=derive_seed(seed, "augment", epoch, index)`` when it takes one
    (:class:`~synthrel_lightning.data.transforms.SegmentationTransform` does); any other callable
    runs with Python's, NumPy's and torch's global generators seeded from that value (and restored
    after), so a sample is the same whatever the worker, the number of workers or a resume.
    ``fixed_epoch`` pins the epoch (evaluation sets built with seeded outliers).
    """

    def __init__(
        self,
        base: Dataset[Sample],
        transform: Transform | None = None,
        mixer: Mixer | None = None,
        seed: int = 0,
        epoch: int = 0,
        fixed_epoch: int | None = None,
    ) -> None:
        self.base = base
        self.transform = transform
        self.mixer = mixer
        self.seed = int(seed)
        self.epoch = int(epoch if fixed_epoch is None else fixed_epoch)
        self.fixed_epoch = fixed_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch plain integer indices use, and let the mixer pick up new outliers."""
        if self.fixed_epoch is None:
            self.epoch = int(epoch)
        refresh = getattr(self.mixer, "refresh", None)
        if callable(refresh):
            refresh()

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | SampleKey) -> Sample:
        if isinstance(key, tuple):
            epoch, index = int(key[0]), int(key[1])
        else:
            epoch, index = self.epoch, int(key)
        if self.fixed_epoch is not None:
            epoch = self.fixed_epoch
        sample = self.base[index]
        if self.mixer is not None:
            sample = self.mixer(sample, index=index, epoch=epoch)
        if self.transform is None:
            return sample
        seed = derive_seed(self.seed, "augment", epoch, index)
        if _takes_seed(self.transform):
            return self.transform(sample, seed=seed)  # type: ignore[call-arg]
        with seeded_global_rngs(seed):
            return self.transform(sample)

    def __getattr__(self, name: str) -> Any:
        # Expose the base dataset's extras (names, skipped, has_ood, ...) without copying them.
        if name.startswith("__") or name in ("base", "transform", "mixer", "seed", "epoch", "fixed_epoch"):
            raise AttributeError(name)
        base = self.__dict__.get("base")
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)


def _takes_seed(transform: Any) -> bool:
    from synthrel_lightning.data.transforms import SegmentationTransform

    return isinstance(transform, SegmentationTransform)
