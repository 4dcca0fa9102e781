"""A datamodule view serving some of another datamodule's named evaluation sets, plus frame subsets of them.

The study evaluates a model only on the sets its cache lacks, and on QC-filtered views of
the synthetic sets (``<set>@qc``: the frames a QC filter keeps). :class:`EvaluationSetsView`
wraps the study's datamodule without copying or re-indexing it: its loaders are the
datamodule's own, or a :class:`~torch.utils.data.Subset` of one built with the same batch
size, collation and workers, so a view's frame is bit-for-bit the frame the full set serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from synthrel_lightning.data.named_sets import datamodule_loader

__all__ = ["EvaluationSetsView", "frame_names", "indices_of"]


def frame_names(dataset: Any) -> list[str] | None:
    """The frame names of an evaluation dataset, found through its wrappers; None if it does not list them."""
    seen = 0
    while dataset is not None and seen < 8:
        names = getattr(dataset, "names", None)
        if callable(names):
            return [str(n) for n in names()]
        if isinstance(names, (list, tuple)):
            return [str(n) for n in names]
        dataset = getattr(dataset, "base", None) or getattr(dataset, "dataset", None)
        seen += 1
    return None


def indices_of(dataset: Any, keep: Sequence[str], set_name: str) -> list[int]:
    """Positions in ``dataset`` of the frames named ``keep`` (order of the dataset)."""
    names = frame_names(dataset)
    if names is None:
        raise ValueError(f"evaluation set {set_name!r}: its dataset does not list frame names, so no filter applies")
    wanted = set(keep)
    unknown = sorted(wanted - set(names))
    if unknown:
        raise ValueError(
            f"evaluation set {set_name!r}: the QC table names frames the set does not hold ({unknown[:5]}...); "
            "was the table made for another set? Rerun the qc stage"
        )
    return [i for i, n in enumerate(names) if n in wanted]


class EvaluationSetsView(L.LightningDataModule):
    """``datamodule``'s sets ``sets`` and the frame subsets ``subsets`` (view name -> (set, frame names)).

    Set-up of the wrapped datamodule happens once, whatever the number of views made over it.
    """

    def __init__(
        self,
        datamodule: L.LightningDataModule,
        sets: Sequence[str] = (),
        subsets: Mapping[str, tuple[str, Sequence[str]]] | None = None,
    ) -> None:
        super().__init__()
        self.inner = datamodule
        self.sets = list(sets)
        self.subsets = dict(subsets or {})
        clash = sorted(set(self.sets) & set(self.subsets))
        if clash:
            raise ValueError(f"EvaluationSetsView: names {clash} are both a set and a subset")

    @property
    def val_set_names(self) -> list[str]:
        """The view's set names, in loader order."""
        return [*self.sets, *self.subsets]

    def prepare_data(self) -> None:
        """Prepare the wrapped datamodule (writes nothing itself)."""
        self.inner.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Set up the wrapped datamodule for evaluation."""
        self.inner.setup("validate")

    def _subset_loader(self, base: DataLoader, indices: list[int]) -> DataLoader:
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(Subset(base.dataset, indices), shuffle=False)
        return DataLoader(
            Subset(base.dataset, indices),
            batch_size=base.batch_size,
            sampler=sampler,
            collate_fn=base.collate_fn,
            num_workers=base.num_workers,
            pin_memory=base.pin_memory,
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per view set: the datamodule's own, or a subset of it."""
        loaders = [datamodule_loader(self.inner, name, "val", "study") for name in self.sets]
        for set_name, keep in self.subsets.values():
            base = datamodule_loader(self.inner, set_name, "val", "study")
            loaders.append(self._subset_loader(base, indices_of(base.dataset, keep, set_name)))
        return loaders

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The wrapped datamodule's device-side step (e.g. uint8 normalisation)."""
        return self.inner.on_after_batch_transfer(batch, dataloader_idx)
