"""The DataModule of the generation predict loop: work items listed in ``setup``, kept on the host."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from synthrel_lightning.atomic import TEMP_PREFIX, abandoned_temp
from synthrel_lightning.png_check import png_damage
from synthrel_lightning.predict_loop import HostItemsDataModule
from synthrel_lightning.synthesis.bank import CorruptEntryError, OutlierBank
from synthrel_lightning.synthesis.generate.items import WorkItemDataset, WriteKind, bank_keys
from synthrel_lightning.synthesis.generate.writer import eval_paths
from synthrel_lightning.synthesis.placement import PlacementSampler
from synthrel_lightning.synthesis.vocabulary import VocabularyEntry

__all__ = ["HostItemsDataModule", "GenerationDataModule", "remove_stale_temp_files"]

log = logging.getLogger(__name__)


def remove_stale_temp_files(bank_root: str | Path, eval_dir: str | Path | None, max_age_s: float = 3600.0) -> int:
    """Delete temp files left by writers that are gone, in the bank and in ``eval_dir``; returns the count.

    A temp file is removed when its name says a process of this host wrote it and that
    process has ended, or when it is older than ``max_age_s`` (see
    :func:`~synthrel_lightning.atomic.abandoned_temp`); fresh files of live writers (another
    ``generate`` on this or another node) are kept.
    """
    removed = OutlierBank(bank_root, mode="a").cleanup_temp(max_age_s)
    if eval_dir is not None:
        for folder in (Path(eval_dir) / "images", Path(eval_dir) / "labels"):
            for path in folder.glob(f"{TEMP_PREFIX}*") if folder.is_dir() else []:
                try:
                    if abandoned_temp(path, max_age_s):
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
    return removed


class GenerationDataModule(HostItemsDataModule):
    """Lists the items still to do in ``setup``: an item is done when ALL its outputs exist (bank entries, PNGs)."""

    def __init__(
        self,
        source: Dataset,
        bank_root: str,
        vocabulary: Sequence[VocabularyEntry],
        placement: PlacementSampler,
        seed: int = 0,
        objects_per_frame: int = 1,
        max_frames: int | None = None,
        write: WriteKind = "object",
        eval_dir: str | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.source, self.bank_root, self.vocabulary, self.placement = source, bank_root, vocabulary, placement
        self.seed, self.objects_per_frame, self.max_frames, self.write = seed, objects_per_frame, max_frames, write
        self.eval_dir = eval_dir
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.items: WorkItemDataset | None = None
        self.temp_files_removed = 0
        self.damaged_outputs = 0
        """Items whose outputs were present but damaged (done again) in this run."""

    def is_done(self, key: str) -> bool:
        """True when item ``key`` has every output: its bank entries and, with ``eval_dir``, its three PNGs."""
        keys = bank_keys(key, self.write)
        if not all(k in self._done_keys for k in keys):
            return False
        if self.eval_dir is not None and not all(p.is_file() for p in eval_paths(self.eval_dir, key)):
            return False
        # Present: check the content too, so that a damaged output is redone instead of counted as done.
        bank = OutlierBank(self.bank_root, mode="a")
        for k in keys:
            try:
                bank.get(k)
            except (CorruptEntryError, OSError, ValueError) as err:
                self._redo(key, f"bank entry {bank.path(k)} is damaged ({err})")
                return False
        for path in eval_paths(self.eval_dir, key) if self.eval_dir is not None else []:
            damage = png_damage(path)
            if damage is not None:
                self._redo(key, f"evaluation file {path} is damaged: {damage}")
                return False
        return True

    def _redo(self, key: str, why: str) -> None:
        self.damaged_outputs += 1
        log.warning("generate: item %s is done again: %s", key, why)

    def setup(self, stage: str) -> None:
        """Clean temp files of killed writers, scan the outputs and list the items still to do."""
        # Lightning holds a barrier after setup on all ranks: nobody writes before the cleaning is over.
        if self.trainer is None or self.trainer.global_rank == 0:
            self.temp_files_removed = remove_stale_temp_files(self.bank_root, self.eval_dir)
        self._done_keys = set(OutlierBank(self.bank_root, mode="a").keys())
        self.items = WorkItemDataset(
            self.source,
            self.vocabulary,
            self.placement,
            self.seed,
            self.objects_per_frame,
            self.max_frames,
            is_done=self.is_done,
        )
        self.log_pending("generate", self.bank_root)
