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
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import struct
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from synthrel_lightning.atomic import TEMP_PREFIX, abandoned_temp, create_temp
from synthrel_lightning.labels import NUM_CLASSES, OOD_ID

__all__ = ["OutlierEntry", "OutlierBank", "CorruptEntryError", "BankWriteError"]

log = logging.getLogger(__name__)

FORMAT = "synthrel-outlier-bank"
FORMAT_VERSION = 2
_TMP_PREFIX = TEMP_PREFIX
_SUFFIX = ".entry"
_LEGACY_SUFFIX = ".npz"  # format 1 entries (NumPy archives)
_MAGIC = b"\x93SRBANK\x02"
_HEADER = struct.Struct("<I")  # header length, after the magic


class CorruptEntryError(RuntimeError):
    """An entry file exists but cannot be decoded or fails its checksum."""


class BankWriteError(OSError):
    """Writing an entry failed (disk full, permissions, ...); nothing was committed."""


@dataclass
class OutlierEntry:
    """One synthetic outlier: an RGB crop, its soft object mask and provenance.

    ``kind="object"`` entries are crops to paste; ``kind="frame"`` entries are whole
    synthetic frames (``rgb`` the frame, ``alpha`` the object mask, ``label`` the
    frame's semantic train ids if known), used to replace a real frame.
    """

    rgb: np.ndarray
    alpha: np.ndarray
    label_value: int = OOD_ID
    name: str = ""
    prompt: str = ""
    source: str = ""
    seed: int | None = None
    model: str = ""
    created: float = field(default_factory=time.time)
    kind: Literal["object", "frame"] = "object"
    label: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rgb = np.asarray(self.rgb)
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"OutlierEntry.rgb must be uint8 (h, w, 3), got {self.rgb.dtype} {self.rgb.shape}")
        alpha = np.asarray(self.alpha)
        if alpha.shape != self.rgb.shape[:2]:
            raise ValueError(f"OutlierEntry.alpha must be (h, w) = {self.rgb.shape[:2]}, got {alpha.shape}")
        if alpha.dtype != np.uint8:
            if alpha.dtype == bool:
                alpha = alpha.astype(np.uint8) * 255
            else:
                a = alpha.astype(np.float32)
                if a.size and (np.nanmin(a) < 0.0 or np.nanmax(a) > 1.0):
                    raise ValueError("a float OutlierEntry.alpha must lie in [0, 1] (or pass uint8 0..255)")
                alpha = np.round(np.nan_to_num(a) * 255.0).astype(np.uint8)
        self.alpha = alpha
        self.label_value = int(self.label_value)
        if not (0 <= self.label_value < NUM_CLASSES or self.label_value == OOD_ID):
            raise ValueError(
                f"OutlierEntry.label_value must be a train id 0..{NUM_CLASSES - 1} or {OOD_ID} (OOD), "
                f"got {self.label_value}"
            )
        if self.kind not in ("object", "frame"):
            raise ValueError(f"OutlierEntry.kind must be 'object' or 'frame', got {self.kind!r}")
        if self.label is not None:
            self.label = np.asarray(self.label)
            if self.label.shape != self.rgb.shape[:2] or self.label.dtype != np.uint8:
                raise ValueError(
                    f"OutlierEntry.label must be uint8 {self.rgb.shape[:2]}, got {self.label.dtype} {self.label.shape}"
                )

    @property
    def is_ood(self) -> bool:
        """True for OOD objects, False for in-distribution controls (a train id)."""
        return self.label_value == OOD_ID

    def alpha_float(self) -> np.ndarray:
        """The soft mask as float32 in [0, 1]."""
        return self.alpha.astype(np.float32) * (1.0 / 255.0)

    def _meta(self) -> dict[str, Any]:
        return {
            "label_value": self.label_value,
            "name": self.name,
            "prompt": self.prompt,
            "source": self.source,
            "seed": self.seed,
            "model": self.model,
            "created": self.created,
            "kind": self.kind,
            "metadata": self.metadata,
        }


def _checksum(arrays: dict[str, np.ndarray], meta_json: str) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8).data if a.size else b"")  # the raw bytes, without a copy
    h.update(meta_json.encode("utf-8"))
    return h.hexdigest()


def encode_entry(entry: OutlierEntry, compress: bool = True, version: int = FORMAT_VERSION) -> bytes:
    """Serialise an entry to self-checking bytes: the raw entry format (``version=2``) or an ``.npz`` (1)."""
    arrays = {"rgb": entry.rgb, "alpha": entry.alpha}
    if entry.label is not None:
        arrays["label"] = entry.label
    meta_json = json.dumps(entry._meta(), sort_keys=True, default=str)
    checksum = _checksum(arrays, meta_json)
    if version == 1:
        buf = io.BytesIO()
        save = np.savez_compressed if compress else np.savez
        save(
            buf,
            **arrays,  # type: ignore[arg-type]  # numpy's stub: a ** mapping might hold allow_pickle
            meta=np.frombuffer(meta_json.encode("utf-8"), dtype=np.uint8),
            checksum=np.frombuffer(checksum.encode("ascii"), dtype=np.uint8),
        )
        return buf.getvalue()
    if version != 2:
        raise ValueError(f"outlier bank entry format version must be 1 or 2, got {version!r}")
    layout = []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        layout.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": a.nbytes})
    payload = b"".join(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data for a in arrays.values())
    if compress:
        payload = zlib.compress(payload, 1)
    header = json.dumps(
        {"meta": meta_json, "arrays": layout, "codec": "zlib" if compress else "raw", "checksum": checksum}
    ).encode("utf-8")
    return b"".join((_MAGIC, _HEADER.pack(len(header)), header, payload))


def _decode_raw(data: bytes | bytearray | memoryview) -> tuple[dict[str, np.ndarray], str, str]:
    """Arrays (views of ``data``, no copy when uncompressed), metadata JSON and stored checksum of a raw entry."""
    view = memoryview(data)
    start = len(_MAGIC) + _HEADER.size
    if len(view) < start:
        raise ValueError(f"{len(view)} bytes is shorter than the entry header")
    (n,) = _HEADER.unpack_from(view, len(_MAGIC))
    if start + n > len(view):
        raise ValueError(f"the header claims {n} bytes but the file ends {len(view) - start} bytes after its start")
    header = json.loads(bytes(view[start : start + n]).decode("utf-8"))
    payload = view[start + n :]
    if header["codec"] == "zlib":
        inflate = zlib.decompressobj()
        raw = inflate.decompress(payload)
        if not inflate.eof or inflate.unused_data:
            raise ValueError("the compressed data is truncated or followed by extra bytes")
        payload = memoryview(bytearray(raw))
    elif header["codec"] != "raw":
        raise ValueError(f"unknown codec {header['codec']!r}")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for spec in header["arrays"]:
        dtype, shape, nbytes = np.dtype(spec["dtype"]), tuple(int(v) for v in spec["shape"]), int(spec["nbytes"])
        if offset + nbytes > len(payload):
            raise ValueError(f"array {spec['name']!r} runs past the end of the data (truncated file?)")
        arrays[spec["name"]] = np.frombuffer(payload, dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(
            shape
        )
        offset += nbytes
    if offset != len(payload):
        raise ValueError(f"{len(payload) - offset} bytes of data after the last array")
    return arrays, str(header["meta"]), str(header["checksum"])


def decode_entry(data: bytes | bytearray | Path, origin: str = "<bytes>") -> OutlierEntry:
    """Decode and verify an entry (either format); raises :class:`CorruptEntryError` naming ``origin``."""
    try:
        if isinstance(data, Path):
            data = data.read_bytes()
        if bytes(data[: len(_MAGIC)]) == _MAGIC:
            arrays, meta_json, stored = _decode_raw(data)
        else:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("rgb", "alpha", "label") if k in z.files}
                meta_json = z["meta"].tobytes().decode("utf-8")
                stored = z["checksum"].tobytes().decode("ascii")
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
        zlib.error,
    ) as e:
        raise CorruptEntryError(
            f"outlier bank entry {origin} is unreadable ({type(e).__name__}: {e}); delete it or regenerate"
        ) from e
    if _checksum(arrays, meta_json) != stored:
        raise CorruptEntryError(f"outlier bank entry {origin} fails its checksum; delete it or regenerate")
    meta = json.loads(meta_json)
    return OutlierEntry(rgb=arrays["rgb"], alpha=arrays["alpha"], label=arrays.get("label"), **meta)


def _read_writable(path: Path) -> bytearray:
    """The bytes of ``path`` in a fresh writable buffer (arrays viewing it are writable, as NumPy's own)."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        got = f.readinto(buf)
        if got != size:
            del buf[got:]
        return buf


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
                data = _read_writable(path)
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
