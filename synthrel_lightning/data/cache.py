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
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from synthrel_lightning.atomic import atomic_write, atomic_write_json
from synthrel_lightning.data.base import Frame, SegmentationDataset
from synthrel_lightning.data.io import PathLike
from synthrel_lightning.data.sample import Sample, SampleKey

__all__ = ["DecodedCache"]

_META = "sample.json"
_VERSION = 1


def _file_id(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


class DecodedCache(Dataset[Sample]):
    """The raw samples of ``base``, decoded on first access and served from ``cache_dir`` afterwards.

    Each frame is keyed by its dataset class, name and files (path, size and modification
    time), so an edited or replaced file is decoded again. Entries are written atomically
    (a crash leaves no half-written entry; concurrent DataLoader workers may write the
    same entry safely) with the mode a plain ``open()`` gives under the umask. ``cache_dir``
    must lie outside the dataset folder: the dataset is never written to. Samples hold
    read-only memory-mapped arrays; transforms and mixers copy what they change.
    ``base.transform`` (if any) is applied after the cache, which holds raw samples only.
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

    def __len__(self) -> int:
        return len(self.base)

    def _entry(self, frame: Frame) -> Path:
        files = [frame.image, *([frame.label] if frame.label is not None else []), *frame.extras.values()]
        ident = [type(self.base).__qualname__, frame.name, *(_file_id(p) for p in files)]
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
        cached = self._read(entry)
        if cached is not None:
            self.hits += 1
            return cached  # type: ignore[return-value]
        sample = self.base.load_raw(index)
        self.misses += 1
        self._write(entry, sample)
        return sample

    def __getitem__(self, index: int | SampleKey) -> Sample:
        sample = self.load_raw(index)
        transform = self.base.transform
        return transform(sample) if transform is not None else sample

    @staticmethod
    def _read(entry: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads((entry / _META).read_text(encoding="utf-8"))
            if meta.get("version") != _VERSION:
                return None
            sample: dict[str, Any] = dict(meta["values"])
            for key in meta["arrays"]:
                sample[key] = np.load(entry / f"{key}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError):
            return None
        return sample

    @staticmethod
    def _write(entry: Path, sample: Sample) -> None:
        arrays = {k: v for k, v in sample.items() if isinstance(v, np.ndarray)}
        values = {k: v for k, v in sample.items() if not isinstance(v, np.ndarray)}
        try:
            json.dumps(values)
        except TypeError:
            return  # values the cache cannot store: serve decoded samples uncached
        for key, arr in arrays.items():
            atomic_write(entry / f"{key}.npy", functools.partial(np.save, arr=np.ascontiguousarray(arr)))
        # Written last: an entry counts only once every array is in place.
        atomic_write_json(entry / _META, {"version": _VERSION, "arrays": sorted(arrays), "values": values})

    def __getattr__(self, name: str) -> Any:
        # The dataset's extras (names, skipped, frames, has_ood, check_frames, ...) come from base.
        if name.startswith("__") or name in ("base", "cache_dir", "folder", "hits", "misses"):
            raise AttributeError(name)
        base = self.__dict__.get("base")
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)

    def __repr__(self) -> str:
        return f"DecodedCache({self.base!r}, cache_dir={str(self.cache_dir)!r})"
