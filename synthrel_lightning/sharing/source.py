"""Reading a shared set: resolve a folder or Hub id to local files, then random access to its rows by index.

A source is a local folder holding Parquet shards (``data/<split>-*.parquet``, listed by the manifest or
the card's ``configs``) or a Hugging Face Hub dataset id (``owner/name``), whose files are downloaded
once into the Hub cache (``huggingface_hub.snapshot_download``) and read from there.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from synthrel_lightning.data.io import DatasetError
from synthrel_lightning.sharing.format import CARD, DATA_DIR, MANIFEST

__all__ = ["resolve_source", "SharedTable", "read_manifest", "is_hub_id"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_hub_id(source: str) -> bool:
    """True for ``owner/name`` strings (what a Hub dataset id looks like)."""
    return bool(_HUB_ID.match(source)) and ".." not in source


def _has_shards(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() or any((folder / DATA_DIR).glob("*.parquet"))


def resolve_source(
    source: str | os.PathLike[str], revision: str | None = None, token: str | None = None, split: str | None = None
) -> Path:
    """The local folder of ``source``: itself when it is a folder of shards, else a download of the Hub dataset."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not _has_shards(path):
            raise DatasetError(
                f"shared set: {path} is a folder but holds no shared set (no {MANIFEST} and no "
                f"{DATA_DIR}/*.parquet shards); export one with `python -m synthrel_lightning share_set export`"
            )
        return path
    if path.exists() or not is_hub_id(text):
        raise DatasetError(
            f"shared set: {text!r} is neither a folder with Parquet shards nor a Hugging Face Hub dataset id "
            "(owner/name)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = [MANIFEST, CARD, "qc/*", f"{DATA_DIR}/{split}-*" if split else f"{DATA_DIR}/*"]
    try:
        folder = snapshot_download(text, repo_type="dataset", revision=revision, token=token, allow_patterns=patterns)
    except (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, OSError, ValueError) as err:
        raise DatasetError(
            f"shared set: cannot fetch Hub dataset {text!r}"
            + (f" at revision {revision!r}" if revision else "")
            + f" ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); is the id right, the "
            "network reachable, and (for a private set) a token given?"
        ) from err
    folder_path = Path(folder)
    if not _has_shards(folder_path):
        raise DatasetError(f"shared set: Hub dataset {text!r} holds no Parquet shards under {DATA_DIR}/")
    return folder_path


def read_manifest(folder: Path) -> dict[str, Any]:
    """The set's manifest (``{}`` for a Parquet dataset written by other tools)."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"shared set: cannot read {path}: {err}") from err


def _card_files(folder: Path) -> dict[str, list[str]]:
    """``{split: [patterns]}`` from the card's ``configs`` (default config) when it has them."""
    card = folder / CARD
    if not card.is_file():
        return {}
    text = card.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    import yaml

    try:
        header = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return {}
    for config in header.get("configs", []) or []:
        if config.get("config_name", "default") == "default":
            out: dict[str, list[str]] = {}
            for item in config.get("data_files", []) or []:
                paths = item.get("path", [])
                out.setdefault(str(item.get("split", "train")), []).extend([paths] if isinstance(paths, str) else paths)
            return out
    return {}


def split_files(folder: Path, manifest: dict[str, Any]) -> dict[str, list[Path]]:
    """``{split: [shard files]}`` from the manifest, else the card, else ``data/<split>-*.parquet`` names."""
    if manifest.get("splits"):
        return {s: [folder / f for f in v["files"]] for s, v in manifest["splits"].items()}
    patterns = _card_files(folder)
    if patterns:
        return {s: sorted(p for pat in pats for p in folder.glob(pat)) for s, pats in patterns.items()}
    found: dict[str, list[Path]] = {}
    for path in sorted((folder / DATA_DIR).glob("*.parquet")):
        found.setdefault(path.name.split("-")[0], []).append(path)
    return found


class SharedTable:
    """Random access to the rows of one split of a shared set (row groups read on demand, two kept)."""

    def __init__(self, folder: Path, split: str, required: tuple[str, ...], key_column: str) -> None:
        import pyarrow.parquet as pq

        self.folder = folder
        self.split = split
        self.manifest = read_manifest(folder)
        splits = split_files(folder, self.manifest)
        if split not in splits:
            raise DatasetError(f"shared set {folder}: no split {split!r}; its splits: {sorted(splits)}")
        self.files = splits[split]
        missing_files = [str(f) for f in self.files if not f.is_file()]
        if not self.files or missing_files:
            raise DatasetError(f"shared set {folder}: split {split!r} lists missing shard files {missing_files}")
        self.schema = pq.read_schema(self.files[0])
        absent = [c for c in required if c not in self.schema.names]
        if absent:
            raise DatasetError(
                f"shared set {folder}: split {split!r} lacks the columns {absent} (expected {list(required)}; "
                f"it has {self.schema.names})"
            )
        self.columns = list(self.schema.names)
        self._groups: list[tuple[int, int]] = []  # (file, row group)
        self._starts: list[int] = []
        keys: list[str] = []
        total = 0
        for f, path in enumerate(self.files):
            meta = pq.ParquetFile(path).metadata
            for g in range(meta.num_row_groups):
                self._groups.append((f, g))
                self._starts.append(total)
                total += meta.row_group(g).num_rows
            keys.extend(str(k) for k in pq.read_table(path, columns=[key_column]).column(key_column).to_pylist())
        self.keys = keys
        self._files: dict[int, Any] = {}
        self._cache: OrderedDict[tuple[int, tuple[str, ...]], Any] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"], state["_cache"] = {}, OrderedDict()  # open files stay in their process
        return state

    def __len__(self) -> int:
        return len(self.keys)

    def file_of(self, index: int) -> Path:
        """The shard file holding row ``index``."""
        return self.files[self._groups[bisect.bisect_right(self._starts, index) - 1][0]]

    def row(self, index: int, columns: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Row ``index`` of the split as a dict of Python values (image cells as ``{"bytes", "path"}``)."""
        import pyarrow.parquet as pq

        if not 0 <= index < len(self.keys):
            raise IndexError(f"shared set {self.folder} split {self.split!r}: row {index} of {len(self.keys)}")
        cols = tuple(c for c in (columns or self.columns) if c in self.columns)
        g = bisect.bisect_right(self._starts, index) - 1
        table = self._cache.get((g, cols))
        if table is None:
            f, group = self._groups[g]
            handle = self._files.get(f)
            if handle is None:
                handle = self._files[f] = pq.ParquetFile(self.files[f])
            table = handle.read_row_group(group, columns=list(cols))
            self._cache[(g, cols)] = table
            if len(self._cache) > 2:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end((g, cols))
        return table.slice(index - self._starts[g], 1).to_pylist()[0]
