"""An opt-in cache of decoded frames: raw uint8 arrays in memory-mapped ``.npy`` files outside the dataset folder.

Decoding a 2048x1024 PNG costs about 50 ms per frame on one core, every epoch; reading the
same frame back from a memory-mapped ``.npy`` costs well under a millisecond once the
page cache holds it, and only the rows a crop needs are read from disk. The cache costs
disk space: about 10 MB per 2048x1024 frame (image + label + ood).
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from synthrel_lightning.atomic import atomic_write, atomic_write_json
from synthrel_lightning.data.base import Frame, SegmentationDataset
from synthrel_lightning.data.io import PathLike
from synthrel_lightning.data.sample import Sample, SampleKey

__all__ = ["CacheEntryDamaged", "DecodedCache"]

_META = "sample.json"
_VERSION = 2
_CHUNK = 1 << 20


def _file_id(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _crc_file(path: Path) -> int:
    """CRC-32 of a file's bytes (read in 1 MiB chunks)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _crc_array(arr: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(arr).data.cast("B"))


def _source_record(path: Path) -> dict[str, Any]:
    """What identifies a source file's content: size, modification time, inode change time and CRC-32."""
    st = path.stat()
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "crc32": _crc_file(path),
    }


def _source_unchanged(record: dict[str, Any]) -> bool:
    """Whether a source file still holds the bytes it held when the entry was written.

    Size and modification time are in the entry's key already. The inode change time moves
    on every write, rename or ``utime`` (no call sets it back), so an unchanged inode and
    change time mean unchanged content; otherwise the content's CRC-32 decides (a file
    replaced by another with the same size and modification time is caught here).
    """
    path = Path(record["path"])
    st = path.stat()
    if st.st_size != record["size"] or st.st_mtime_ns != record["mtime_ns"]:
        return False
    if st.st_ino == record["ino"] and st.st_ctime_ns == record["ctime_ns"]:
        return True
    return _crc_file(path) == record["crc32"]


def _record_check(body: dict[str, Any]) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


class CacheEntryDamaged(Exception):
    """A cache entry that exists but cannot be trusted (named file, reason)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DecodedCache(Dataset[Sample]):
    """The raw samples of ``base``, decoded on first access and served from ``cache_dir`` afterwards.

    Each frame is keyed by its dataset class, name and files (path, size and modification
    time), so an edited or replaced file is decoded again. Every entry is checked when read:
    its record (``sample.json``) carries its own CRC-32, the frame it belongs to, the CRC-32,
    shape and dtype of every cached array and the identity of every source file (size,
    modification time and a CRC-32 of its bytes, re-read only when the file's inode change
    time moved). A source file whose content changed is decoded again; a damaged entry
    (bit flips, truncated, empty, swapped or edited files) is reported in a warning naming
    the file, decoded again and rewritten, never served. Entries are written atomically
    (a crash leaves no half-written entry; concurrent DataLoader workers may write the
    same entry safely) with the mode a plain ``open()`` gives under the umask. ``cache_dir``
    must lie outside the dataset folder: the dataset is never written to. Samples hold
    read-only memory-mapped arrays; transforms and mixers copy what they change.
    ``base.transform`` (if any) is applied after the cache, which holds raw samples only.
    Checking costs a CRC-32 of the cached arrays per read (about 2.5 ms for a 2048x1024
    frame's 10 MB on one core), against about 50 ms to decode its PNG files.
    Delete the folder after changing how a dataset class decodes its files.
    """

    def __init__(self, base: SegmentationDataset, cache_dir: PathLike) -> None:
        if not isinstance(base, SegmentationDataset):
            raise TypeError(
                f"DecodedCache: base must be a file-backed SegmentationDataset (it caches by frame files), "
                f"got {type(base).__name__}"
            )
        root = base.root.resolve()
        cache = Path(cache_dir).expanduser().resolve()
        if cache == root or root in cache.parents:
            raise ValueError(
                f"DecodedCache: cache_dir {cache} is inside the dataset folder {root}; "
                "choose a folder outside it (the dataset is never written to)"
            )
        self.base = base
        self.cache_dir = cache
        tag = hashlib.sha256(f"{type(base).__qualname__}:{root}".encode()).hexdigest()[:12]
        self.folder = cache / f"{type(base).__name__}-{tag}"
        self.hits = 0
        """Samples served from the cache in this process."""
        self.misses = 0
        """Samples decoded (and written to the cache) in this process."""
        self.damaged = 0
        """Damaged entries found (reported, decoded again and rewritten) in this process."""

    def __len__(self) -> int:
        return len(self.base)

    @staticmethod
    def _files(frame: Frame) -> list[Path]:
        return [frame.image, *([frame.label] if frame.label is not None else []), *frame.extras.values()]

    def _entry(self, frame: Frame) -> Path:
        ident = [type(self.base).__qualname__, frame.name, *(_file_id(p) for p in self._files(frame))]
        key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
        return self.folder / key[:2] / key

    def load_raw(self, index: int | SampleKey) -> Sample:
        """The raw sample of frame ``index``, from the cache when present (decoded and stored otherwise)."""
        if isinstance(index, tuple):
            index = index[1]
        n = len(self.base)
        if not -n <= index < n:
            raise IndexError(f"DecodedCache: index {index} out of range for {n} frames")
        frame = self.base.frames[index % n]
        try:
            entry = self._entry(frame)
        except OSError:
            return self.base.load_raw(index)  # a missing file: let the dataset report it
        try:
            cached = self._read(entry, frame)
        except CacheEntryDamaged as err:
            self.damaged += 1
            warnings.warn(
                f"DecodedCache: damaged cache file {err.path} ({err.reason}); "
                f"decoding frame {frame.name!r} from {frame.image} again and rewriting the entry",
                RuntimeWarning,
                stacklevel=2,
            )
            cached = None
        if cached is not None:
            self.hits += 1
            return cached  # type: ignore[return-value]
        try:
            sources = [_source_record(p) for p in self._files(frame)]
        except OSError:
            return self.base.load_raw(index)
        sample = self.base.load_raw(index)
        self.misses += 1
        self._write(entry, frame, sources, sample)
        return sample

    def __getitem__(self, index: int | SampleKey) -> Sample:
        sample = self.load_raw(index)
        transform = self.base.transform
        return transform(sample) if transform is not None else sample

    @staticmethod
    def _read(entry: Path, frame: Frame) -> dict[str, Any] | None:
        """The entry's sample; ``None`` when absent or stale, :class:`CacheEntryDamaged` when damaged."""
        meta_path = entry / _META
        try:
            text = meta_path.read_bytes()
        except FileNotFoundError:
            return None  # not cached (yet): an ordinary miss
        except OSError as err:
            raise CacheEntryDamaged(meta_path, f"unreadable: {err}") from None
        try:
            meta = json.loads(text.decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
            if meta.get("version") != _VERSION:
                return None  # written by another version of the cache: decode again
            body = {k: v for k, v in meta.items() if k != "check"}
            if meta.get("check") != _record_check(body):
                raise ValueError("its checksum does not match its content (edited or corrupt)")
            if meta["entry"] != entry.name or meta["frame"] != frame.name:
                raise ValueError(f"it belongs to frame {meta['frame']!r} (entry {meta['entry']}), not {frame.name!r}")
            sources = meta["sources"]
            arrays_meta = meta["arrays"]
            values = dict(meta["values"])
        except (ValueError, KeyError, TypeError) as err:
            raise CacheEntryDamaged(meta_path, str(err) or type(err).__name__) from None
        try:
            if not all(_source_unchanged(record) for record in sources):
                return None  # a source file changed under the same size and time: decode again
        except OSError:
            return None
        sample: dict[str, Any] = values
        for key, want in arrays_meta.items():
            path = entry / f"{key}.npy"
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise CacheEntryDamaged(path, f"unreadable array: {err or type(err).__name__}") from None
            if list(arr.shape) != want["shape"] or arr.dtype.str != want["dtype"]:
                raise CacheEntryDamaged(
                    path, f"holds {arr.dtype.str} {list(arr.shape)}, the record says {want['dtype']} {want['shape']}"
                )
            if _crc_array(arr) != want["crc32"]:
                raise CacheEntryDamaged(path, "its content does not match the checksum in the record")
            sample[key] = arr
        return sample

    @staticmethod
    def _write(entry: Path, frame: Frame, sources: list[dict[str, Any]], sample: Sample) -> None:
        arrays = {k: np.ascontiguousarray(v) for k, v in sample.items() if isinstance(v, np.ndarray)}
        values = {k: v for k, v in sample.items() if not isinstance(v, np.ndarray)}
        try:
            values = json.loads(json.dumps(values))
        except TypeError:
            return  # values the cache cannot store: serve decoded samples uncached
        for key, arr in arrays.items():
            atomic_write(entry / f"{key}.npy", functools.partial(np.save, arr=arr))
        body = {
            "version": _VERSION,
            "entry": entry.name,
            "frame": frame.name,
            "sources": sources,
            "arrays": {
                k: {"shape": list(a.shape), "dtype": a.dtype.str, "crc32": _crc_array(a)} for k, a in arrays.items()
            },
            "values": values,
        }
        # Written last: an entry counts only once every array is in place.
        atomic_write_json(entry / _META, {**body, "check": _record_check(body)})

    def __getattr__(self, name: str) -> Any:
        # The dataset's extras (names, skipped, frames, has_ood, check_frames, ...) come from base.
        if name.startswith("__") or name in ("base", "cache_dir", "folder", "hits", "misses", "damaged"):
            raise AttributeError(name)
        base = self.__dict__.get("base")
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)

    def __repr__(self) -> str:
        return f"DecodedCache({self.base!r}, cache_dir={str(self.cache_dir)!r})"
