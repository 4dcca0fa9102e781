"""Serving outliers from an on-disk :class:`~synthrel_lightning.synthesis.bank.OutlierBank` (per-process LRU cache)."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthrel_lightning.synthesis.bank import CorruptEntryError, OutlierBank, OutlierEntry
from synthrel_lightning.synthesis.sources.base import OutlierSource

__all__ = ["BankSource"]

log = logging.getLogger(__name__)


class BankSource(OutlierSource):
    """Serves banked outliers; the bank is opened lazily in each process (DataLoader workers)."""

    def __init__(
        self, bank: OutlierBank | str | os.PathLike, kinds: Sequence[str] = ("object",), cache_size: int = 256
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"BankSource: cache_size must be >= 0, got {cache_size}")
        self.root = Path(bank.root if isinstance(bank, OutlierBank) else bank)
        self.kinds = tuple(kinds)
        self.cache_size = int(cache_size)
        self._bank: OutlierBank | None = None
        self._keys: list[str] | None = None
        self._kind_ok: dict[str, bool] = {}
        # Decoded entries, per process (LRU): decompressing and verifying an entry costs
        # more than pasting it, and entries never change once committed.
        self._cache: OrderedDict[str, OutlierEntry] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        # The key snapshot travels to workers (so all workers draw from the same list);
        # the open bank does not.
        state = self.__dict__.copy()
        state["_bank"] = None
        state["_cache"] = OrderedDict()
        return state

    @property
    def bank(self) -> OutlierBank:
        """The bank, opened read-only on first use in this process."""
        if self._bank is None:
            self._bank = OutlierBank(self.root, mode="r")
        return self._bank

    def refresh(self) -> int:
        """Re-scan the bank for entries added since (call between epochs); returns the count."""
        self.bank.refresh()
        self._keys = self.bank.keys()
        return len(self._keys)

    def __len__(self) -> int:
        if self._keys is None:
            self.refresh()
        return len(self._keys or [])

    @property
    def corrupt_skipped(self) -> int:
        """Corrupt entries skipped in this process."""
        return self.bank.corrupt_skipped if self._bank is not None else 0

    def sample(self, rng: np.random.Generator) -> OutlierEntry | None:
        """A random banked entry of an accepted kind (None if the bank has none)."""
        if self._keys is None:
            self.refresh()
        for _ in range(8):
            entry = self._draw(rng)
            if entry is None or entry.kind in self.kinds:
                return entry
        return None

    def _draw(self, rng: np.random.Generator, max_tries: int = 8) -> OutlierEntry | None:
        """A random entry through the cache; corrupt entries are skipped and counted by the bank."""
        pool = self._keys or []
        if not pool:
            return None
        for _ in range(max_tries):
            key = pool[int(rng.integers(len(pool)))]
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                return entry
            try:
                entry = self.bank.get(key)
            except (CorruptEntryError, KeyError) as e:
                self.bank.corrupt_skipped += 1
                log.warning("skipping outlier bank entry: %s", e)
                continue
            if self.cache_size:
                self._cache[key] = entry
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return entry
        return None
