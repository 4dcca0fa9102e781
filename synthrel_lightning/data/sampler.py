"""An epoch-keyed, rank-sharded training sampler: the order of epoch ``e`` depends only on (seed, e)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler

from synthrel_lightning.data.sample import SampleKey
from synthrel_lightning.seeding import torch_generator

__all__ = ["EpochSampler"]


def _distributed() -> tuple[int, int]:
    """(world size, rank) of the default process group; (1, 0) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class EpochSampler(DistributedSampler):
    """Shuffles ``range(len(dataset))`` with a generator seeded by ``(seed, epoch)`` and yields this rank's share.

    Each index is yielded as a :class:`~synthrel_lightning.data.sample.SampleKey` ``(epoch, index)``,
    so the dataset's random draws are keyed by the epoch the sampler was in when it drew the order,
    whatever the worker processes knew. Being a ``DistributedSampler``, Lightning neither replaces
    nor wraps it (``use_distributed_sampler``) and calls :meth:`set_epoch` before every epoch, which
    also calls the dataset's own ``set_epoch`` (if any). The rank's share is every ``world_size``-th
    index of the permutation (padded by repetition, or cut with ``drop_last``), as
    ``torch.utils.data.DistributedSampler`` does. ``num_replicas``/``rank`` default to the process
    group (1/0 outside one).
    """

    def __init__(
        self,
        dataset: Sized,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        epoch: int = 0,
    ) -> None:
        world, me = _distributed()
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=world if num_replicas is None else num_replicas,
            rank=me if rank is None else rank,
            shuffle=shuffle,
            seed=int(seed),
            drop_last=drop_last,
        )
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """The dataset indices this rank reads in the current epoch, in order."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            indices = torch.randperm(n, generator=torch_generator(self.seed, "order", self.epoch)).tolist()
        else:
            indices = list(range(n))
        if self.drop_last:
            indices = indices[: self.total_size]
        elif len(indices) < self.total_size:
            pad = self.total_size - len(indices)
            indices += (indices * math.ceil(pad / max(1, len(indices))))[:pad]
        return indices[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.epoch
        return iter([SampleKey(epoch, i) for i in self.order()])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order (and sample keys) the next iteration yields; tell the dataset too."""
        self.epoch = int(epoch)
        forward = getattr(self.dataset, "set_epoch", None)
        if callable(forward):
            forward(self.epoch)
