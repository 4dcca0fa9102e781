"""The on-disk outlier bank: a sharded, append-only store of synthetic objects.

Layout: ``root/bank.json`` (format marker) and ``root/<shard>/<key>.entry``, the
shard being the first hex digits of a hash of the key. Every entry is one
self-contained file (a JSON header with the metadata, the array layout and a SHA-256
checksum of arrays and metadata, then the raw array bytes, optionally zlib-compressed;
reading an uncompressed one costs a file read and a hash). Banks written before hold
``<key>.npz`` entries (the same content as a NumPy archive); they are still read. Entries
are written to a hidden temp file in the same folder and committed by
:func:`os.replace`, so readers only ever see complete entries, several processes
can write at once without a shared index or locks, and a killed writer leaves
only temp files that are never served (:meth:`OutlierBank.cleanup_temp` removes
them). Keys derived from the work item (:meth:`OutlierBank.make_key`) make an
interrupted generation resumable: done items are skipped.

This module holds the store; the entry type is in :mod:`~synthrel_lightning.synthesis.outlier_entry`, the
file format (encoder, decoder, checksum) in :mod:`~synthrel_lightning.synthesis.entry_codec`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from synthrel_lightning.atomic import TEMP_PREFIX, abandoned_temp, create_temp
from synthrel_lightning.synthesis.entry_codec import (
    FORMAT_VERSION,
    CorruptEntryError,
    decode_entry,
    encode_entry,
    read_writable,
)
from synthrel_lightning.synthesis.outlier_entry import OutlierEntry

__all__ = ["OutlierEntry", "OutlierBank", "CorruptEntryError", "BankWriteError", "decode_entry", "encode_entry"]

log = logging.getLogger(__name__)

FORMAT = "synthrel-outlier-bank"
_TMP_PREFIX = TEMP_PREFIX
_SUFFIX = ".entry"
_LEGACY_SUFFIX = ".npz"  # format 1 entries (NumPy archives)


class BankWriteError(OSError):
    """Writing an entry failed (disk full, permissions, ...); nothing was committed."""


class OutlierBank:
    """A sharded on-disk store of :class:`OutlierEntry` objects, safe for concurrent writers and readers.

    ``compress=True`` zlib-compresses the array bytes of new entries (level 1: files several
    times smaller, about 1 ms more per read of a 300 px object); by default they are stored
    raw, so that training reads cost little more than the file read and the checksum.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        mode: Literal["r", "a"] = "a",
        num_shards: int = 256,
        compress: bool = False,
        fsync: bool = True,
    ) -> None:
        if mode not in ("r", "a"):
            raise ValueError(f"OutlierBank mode must be 'r' (read) or 'a' (read/append), got {mode!r}")
        if not 1 <= num_shards <= 4096:
            raise ValueError(f"num_shards must be in [1, 4096], got {num_shards}")
        self.root = Path(root)
        self.mode = mode
        self.num_shards = int(num_shards)
        self.compress = compress
        self.fsync = fsync
        self._keys: list[str] | None = None
        self._keyset: set[str] = set()
        self.corrupt_skipped = 0
        """Corrupt entries skipped by :meth:`sample` (and :meth:`iter_entries` with ``skip_corrupt``)."""
        if mode == "r":
            if not self.root.is_dir():
                raise FileNotFoundError(
                    f"outlier bank {self.root} does not exist; create it with mode='a' or run `generate`"
                )
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            marker = self.root / "bank.json"
            if not marker.exists():
                payload = json.dumps(
                    {"format": FORMAT, "version": FORMAT_VERSION, "num_shards": self.num_shards}
                ).encode()
                self._atomic_write(marker, payload)
        marker = self.root / "bank.json"
        if marker.exists():
            info = json.loads(marker.read_text())
            if info.get("format") != FORMAT:
                raise ValueError(f"{marker} is not an outlier bank marker (format {info.get('format')!r})")
            if int(info.get("version", 1)) > FORMAT_VERSION:
                raise ValueError(
                    f"{marker}: outlier bank format version {info.get('version')} is newer than this library reads "
                    f"({FORMAT_VERSION}); upgrade synthrel-lightning"
                )
            # The shard count is part of the layout: follow what the bank was created with.
            self.num_shards = int(info.get("num_shards", self.num_shards))

    def __repr__(self) -> str:
        return f"OutlierBank({str(self.root)!r}, mode={self.mode!r}, entries={len(self)})"

    # -- keys and paths ---------------------------------------------------------------
    @staticmethod
    def make_key(*parts: object) -> str:
        """A deterministic key for a work item, e.g. ``make_key(seed, source_frame, object, slot)``."""
        text = "\x1f".join(str(p) for p in parts)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:32]

    @staticmethod
    def _check_key(key: str) -> str:
        if not key or not all(ch.isalnum() or ch in "-_" for ch in key):
            raise ValueError(f"outlier bank keys must be non-empty [A-Za-z0-9_-], got {key!r}")
        return key

    def _shard(self, key: str) -> str:
        h = int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16)
        return f"{h % self.num_shards:03x}"

    def path(self, key: str) -> Path:
        """Path of the committed file for ``key`` (an older bank's ``.npz`` if that is what holds it)."""
        stem = self.root / self._shard(self._check_key(key)) / key
        final = stem.with_name(key + _SUFFIX)
        legacy = stem.with_name(key + _LEGACY_SUFFIX)
        return legacy if not final.exists() and legacy.exists() else final

    # -- writing ------------------------------------------------------------------------
    def _write_bytes(self, path: Path, data: bytes) -> None:
        """Low-level write of a temp file (override point for storage backends)."""
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())

    def _temp_path(self, folder: Path) -> Path:
        return create_temp(folder, "entry")

    def _atomic_write(self, final: Path, data: bytes) -> None:
        tmp = self._temp_path(final.parent)
        try:
            self._write_bytes(tmp, data)
            os.replace(tmp, final)
        except OSError as e:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            hint = " (the disk is full)" if e.errno == errno.ENOSPC else ""
            raise BankWriteError(
                e.errno, f"could not write {final} in outlier bank {self.root}{hint}: {e.strerror or e}"
            ) from e

    def add(self, entry: OutlierEntry, key: str | None = None, overwrite: bool = False) -> str:
        """Commit ``entry`` atomically and return its key; an existing key is kept unless ``overwrite``."""
        if self.mode == "r":
            raise PermissionError(f"outlier bank {self.root} was opened read-only (mode='r')")
        if not isinstance(entry, OutlierEntry):
            raise TypeError(f"OutlierBank.add expects an OutlierEntry, got {type(entry).__name__}")
        key = self._check_key(key) if key is not None else uuid.uuid4().hex
        existing = self.path(key)
        if not overwrite and existing.exists():
            return key
        final = existing.with_name(key + _SUFFIX)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._atomic_write(final, encode_entry(entry, compress=self.compress))
        if existing != final:
            existing.unlink(missing_ok=True)  # the overwritten format 1 entry
        if self._keys is not None and key not in self._keyset:
            self._keys.append(key)
            self._keyset.add(key)
        return key

    # -- reading ------------------------------------------------------------------------
    def _scan(self) -> list[str]:
        keys: set[str] = set()
        try:
            shards = [d for d in os.scandir(self.root) if d.is_dir() and not d.name.startswith(".")]
        except FileNotFoundError:
            return []
        for d in shards:
            with os.scandir(d.path) as it:
                for f in it:
                    if f.name.startswith("."):
                        continue
                    for suffix in (_SUFFIX, _LEGACY_SUFFIX):
                        if f.name.endswith(suffix):
                            keys.add(f.name[: -len(suffix)])
        return sorted(keys)  # a stable order makes sample(rng) reproducible for a given content

    def refresh(self) -> int:
        """Re-scan committed entries (other processes may have added some); returns the count."""
        self._keys = self._scan()
        self._keyset = set(self._keys)
        return len(self._keys)

    def keys(self) -> list[str]:
        """Sorted keys of committed entries (as of the last :meth:`refresh`)."""
        if self._keys is None:
            self.refresh()
        return list(self._keys)  # type: ignore[arg-type]

    def __len__(self) -> int:
        if self._keys is None:
            self.refresh()
        return len(self._keys)  # type: ignore[arg-type]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.path(key).exists()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str) -> OutlierEntry:
        """Read and verify one entry; raises KeyError if absent, :class:`CorruptEntryError` if damaged."""
        stem = self.root / self._shard(self._check_key(key)) / key
        for path in (stem.with_name(key + _SUFFIX), stem.with_name(key + _LEGACY_SUFFIX)):
            try:
                data = read_writable(path)
            except FileNotFoundError:
                continue
            return decode_entry(data, origin=str(path))
        raise KeyError(f"no entry {key!r} in outlier bank {self.root}")

    def sample(
        self, rng: np.random.Generator, keys: list[str] | None = None, max_tries: int = 8
    ) -> OutlierEntry | None:
        """A random entry (from ``keys`` if given); corrupt entries are skipped and counted. None if empty."""
        pool = self.keys() if keys is None else keys
        if not pool:
            return None
        for _ in range(max_tries):
            key = pool[int(rng.integers(len(pool)))]
            try:
                return self.get(key)
            except (CorruptEntryError, KeyError) as e:
                self.corrupt_skipped += 1
                log.warning("skipping outlier bank entry: %s", e)
        return None

    def iter_entries(self, skip_corrupt: bool = False) -> Iterator[tuple[str, OutlierEntry]]:
        """All (key, entry) pairs; corrupt entries raise unless ``skip_corrupt`` (then counted)."""
        for key in self.keys():
            try:
                yield key, self.get(key)
            except CorruptEntryError:
                if not skip_corrupt:
                    raise
                self.corrupt_skipped += 1

    def verify(self) -> list[str]:
        """Keys of entries that fail to decode or verify."""
        bad = []
        for key in self.keys():
            try:
                self.get(key)
            except (CorruptEntryError, KeyError):
                bad.append(key)
        return bad

    def temp_files(self) -> list[Path]:
        """Uncommitted temp files (from writers in progress or killed)."""
        out: list[Path] = []
        for folder in [self.root, *(p for p in self.root.iterdir() if p.is_dir())] if self.root.is_dir() else []:
            out.extend(p for p in folder.iterdir() if p.name.startswith(_TMP_PREFIX))
        return out

    def cleanup_temp(self, max_age_s: float = 3600.0) -> int:
        """Delete temp files of dead writers (same host) or older than ``max_age_s``; returns the count."""
        removed = 0
        for p in self.temp_files():
            try:
                if abandoned_temp(p, max_age_s):
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                pass  # committed or removed by its writer meanwhile
        return removed
