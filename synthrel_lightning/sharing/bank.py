"""A shared outlier bank (local folder or Hub id) as an outlier source, or imported into a local bank."""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from synthrel_lightning.data.io import DatasetError
from synthrel_lightning.sharing.format import BANK_COLUMNS, decode_png
from synthrel_lightning.sharing.source import SharedTable, resolve_source
from synthrel_lightning.synthesis.bank import OutlierBank, OutlierEntry
from synthrel_lightning.synthesis.sources.base import OutlierSource

__all__ = ["HubBankSource", "import_bank", "read_entries"]

log = logging.getLogger(__name__)

_REQUIRED = ("key", "rgb", "alpha", "label_value")


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return "" if value is None else str(value)


def _entry(row: dict[str, Any], where: str) -> OutlierEntry:
    """The :class:`OutlierEntry` of one bank row; a DatasetError naming the row when it is not one."""
    try:
        rgb = decode_png(row["rgb"], 3, f"{where} rgb")
        alpha = decode_png(row["alpha"], 1, f"{where} alpha")
        label = None if row.get("label") is None else decode_png(row["label"], 1, f"{where} label")
        metadata = json.loads(row["metadata"]) if row.get("metadata") else {}
        created = row.get("created")
        return OutlierEntry(
            rgb=rgb,
            alpha=alpha,
            label=label,
            label_value=int(row["label_value"]),
            name=_text(row, "name"),
            prompt=_text(row, "prompt"),
            source=_text(row, "source"),
            seed=None if row.get("seed") is None else int(row["seed"]),
            model=_text(row, "model"),
            created=0.0 if created is None else float(created),
            kind=row.get("kind") or "object",
            metadata=metadata,
        )
    except (ValueError, TypeError) as err:
        raise DatasetError(f"{where}: not an outlier entry: {err}") from err


def _open(source: str | os.PathLike[str], split: str, revision: str | None, token: str | None) -> SharedTable:
    folder = resolve_source(source, revision=revision, token=token, split=split)
    return SharedTable(folder, split, _REQUIRED, "key")


def read_entries(
    source: str | os.PathLike[str], split: str = "train", revision: str | None = None, token: str | None = None
) -> Iterator[tuple[str, OutlierEntry]]:
    """Every ``(key, entry)`` of a shared bank, in row order."""
    return _rows(_open(source, split, revision, token), os.fspath(source))


def _rows(table: SharedTable, source: str) -> Iterator[tuple[str, OutlierEntry]]:
    for i, key in enumerate(table.keys):
        yield key, _entry(table.row(i, BANK_COLUMNS), f"shared bank {source!r} row {i} (key {key!r})")


def import_bank(
    source: str | os.PathLike[str],
    bank: OutlierBank | str | os.PathLike[str],
    split: str = "train",
    revision: str | None = None,
    token: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the entries of a shared bank into a local :class:`OutlierBank` under their keys.

    Entries whose key the bank already holds are kept unless ``overwrite`` (so a rerun resumes).
    Returns ``{"bank", "added", "kept", "entries"}``.
    """
    entries = read_entries(source, split, revision, token)  # a bad source fails before the bank is created
    target = bank if isinstance(bank, OutlierBank) else OutlierBank(bank, mode="a")
    added = kept = 0
    for key, entry in entries:
        if not overwrite and key in target:
            kept += 1
            continue
        target.add(entry, key=key, overwrite=overwrite)
        added += 1
    log.info("share: imported %d entries into %s (%d kept)", added, target.root, kept)
    return {"bank": str(target.root), "added": added, "kept": kept, "entries": added + kept}


class HubBankSource(OutlierSource):
    """Draws outliers from a shared bank, as :class:`~synthrel_lightning.synthesis.BankSource` does from a local one.

    Keys are drawn in sorted order with the same generator calls as ``BankSource``, so a bank and its
    shared copy serve the same outliers for the same generator. ``source`` is a shared-set folder or a Hub
    id; decoded entries are kept in a per-process LRU cache of ``cache_size``. YAML::

        source:
          class_path: synthrel_lightning.sharing.HubBankSource
          init_args: {source: my-lab/outliers-sd2, split: train}
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        split: str = "train",
        revision: str | None = None,
        token: str | None = None,
        kinds: Sequence[str] = ("object",),
        cache_size: int = 256,
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"HubBankSource: cache_size must be >= 0, got {cache_size}")
        self.source = os.fspath(source)
        self.split = split
        self.kinds = tuple(kinds)
        self.cache_size = int(cache_size)
        self.table = _open(source, split, revision, token)
        order = sorted(range(len(self.table.keys)), key=lambda i: self.table.keys[i])
        self._keys = [self.table.keys[i] for i in order]
        self._rows = dict(zip(self._keys, order))
        self._cache: OrderedDict[str, OutlierEntry] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[str]:
        """The entry keys, sorted (the order draws index into)."""
        return list(self._keys)

    def get(self, key: str) -> OutlierEntry:
        """The entry stored under ``key`` (KeyError if absent)."""
        entry = self._cache.get(key)
        if entry is not None:
            self._cache.move_to_end(key)
            return entry
        if key not in self._rows:
            raise KeyError(f"no entry {key!r} in shared bank {self.source!r}")
        where = f"shared bank {self.source!r} key {key!r}"
        entry = _entry(self.table.row(self._rows[key], BANK_COLUMNS), where)
        if self.cache_size:
            self._cache[key] = entry
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return entry

    def sample(self, rng: np.random.Generator) -> OutlierEntry | None:
        """A random entry of an accepted kind (None if the bank has none)."""
        if not self._keys:
            return None
        for _ in range(8):
            entry = self.get(self._keys[int(rng.integers(len(self._keys)))])
            if entry.kind in self.kinds:
                return entry
        return None
