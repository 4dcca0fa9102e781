"""Writing a shared set: bounded Parquet shards in a staging folder, resumable, published by one rename.

The staging folder ``.<name>.partial`` sits beside the output folder. Each shard is written under a
temporary name and renamed when complete; ``progress.json`` records the shards done (their rows and
statistics) with a fingerprint of the source and the settings, so an interrupted export run again with
the same arguments skips the shards already written. When every shard is written the shard files get
their final ``-of-N`` names and the staging folder replaces the output folder (an existing non-empty
output only with ``overwrite=True``): a reader never sees a half-written set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrel_lightning.atomic import atomic_write_json, atomic_write_text
from synthrel_lightning.sharing.format import DATA_DIR, shard_name

__all__ = ["SetWriter", "Shard", "check_output", "fingerprint"]

log = logging.getLogger(__name__)

_PROGRESS = "progress.json"


def fingerprint(payload: Any) -> str:
    """A short hash of a JSON-able description of what is being exported."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def check_output(out: Path, sources: Sequence[Path], overwrite: bool) -> None:
    """Refuse an output inside (or holding) a source folder, and a non-empty output without ``overwrite``."""
    target = out.resolve()
    for src in sources:
        src = src.resolve()
        if target == src or target.is_relative_to(src):
            raise ValueError(
                f"share: output {out} lies inside the source folder {src}; a shared set is never written into a "
                "dataset or bank folder: choose an output outside it"
            )
        if src.is_relative_to(target):
            raise ValueError(f"share: output {out} holds the source folder {src}; choose an output beside it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"share: output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"share: output folder {out} already exists and is not empty; pass overwrite=True (--overwrite true) "
            "to replace it, or choose another folder"
        )


@dataclass
class Shard:
    """One shard being written: its Parquet writer, rows and Arrow bytes so far, and the caller's statistics."""

    writer: Any
    rows: int = 0
    nbytes: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def write(self, table: Any) -> None:
        """Append ``table`` (a pyarrow Table) as one row group."""
        self.writer.write_table(table, row_group_size=max(1, table.num_rows))
        self.rows += int(table.num_rows)
        self.nbytes += int(table.nbytes)


class SetWriter:
    """Stages the files of one shared set beside ``out`` and publishes them with :meth:`publish`."""

    def __init__(self, out: Path, key: str, parquet_options: dict[str, Any] | None = None) -> None:
        self.out = out
        self.staging = out.parent / f".{out.name}.partial"
        self.key = key
        self.parquet_options = dict(parquet_options or {})
        self.done: dict[str, list[dict[str, Any]]] = {}
        progress = self.staging / _PROGRESS
        if progress.is_file():
            try:
                state = json.loads(progress.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                state = {}
            shards = state.get("shards", {}) if state.get("key") == key else None
            intact = shards is not None and all(
                (self.staging / r["file"]).is_file() for records in shards.values() for r in records
            )
            if shards is not None and intact:
                self.done = {s: list(v) for s, v in shards.items()}
                log.info("share: resuming %s (%d shards already written)", out, sum(map(len, self.done.values())))
            else:
                log.info("share: %s holds an export of other settings; starting afresh", self.staging)
                shutil.rmtree(self.staging)
        elif self.staging.exists():
            shutil.rmtree(self.staging)
        (self.staging / DATA_DIR).mkdir(parents=True, exist_ok=True)
        for stale in (self.staging / DATA_DIR).glob("*.tmp"):
            stale.unlink(missing_ok=True)  # a shard a killed run left half-written
        self._save_progress()

    def _save_progress(self) -> None:
        atomic_write_json(self.staging / _PROGRESS, {"key": self.key, "shards": self.done})

    def shards_done(self, split: str) -> list[dict[str, Any]]:
        """The shards of ``split`` already written (in order): ``{"file", "rows", "num_bytes", "stats"}`` each."""
        return list(self.done.get(split, []))

    @contextmanager
    def shard(self, split: str, schema: Any) -> Iterator[Shard]:
        """Open the next shard of ``split``; written row group by row group, committed when the block exits."""
        import pyarrow.parquet as pq

        index = len(self.done.get(split, []))
        name = f"{DATA_DIR}/{split}-{index:05d}.parquet"
        tmp = self.staging / f"{name}.{uuid.uuid4().hex}.tmp"
        shard = Shard(pq.ParquetWriter(tmp, schema, **self.parquet_options))
        try:
            yield shard
            shard.writer.close()
            os.replace(tmp, self.staging / name)
        except BaseException:
            shard.writer.close()
            tmp.unlink(missing_ok=True)
            raise
        record = {"file": name, "rows": shard.rows, "num_bytes": shard.nbytes, "stats": shard.stats}
        self.done.setdefault(split, []).append(record)
        self._save_progress()

    def write_text(self, relative: str, text: str) -> None:
        """Stage a text file (the card, the manifest)."""
        atomic_write_text(self.staging / relative, text)

    def copy_file(self, source: Path, relative: str) -> None:
        """Stage a copy of ``source`` (the QC table) under ``relative``."""
        target = self.staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)

    def finalize_names(self) -> dict[str, list[str]]:
        """Give every shard its final ``<split>-<i>-of-<n>`` name; returns the file list of each split."""
        files: dict[str, list[str]] = {}
        for split, records in self.done.items():
            names = []
            for i, record in enumerate(records):
                final = shard_name(split, i, len(records))
                if record["file"] != final:
                    os.replace(self.staging / record["file"], self.staging / final)
                    record["file"] = final
                names.append(final)
            files[split] = names
        self._save_progress()
        return files

    def publish(self, overwrite: bool) -> Path:
        """Move the staged set into place (replacing a non-empty ``out`` only when ``overwrite``)."""
        (self.staging / _PROGRESS).unlink(missing_ok=True)
        old: Path | None = None
        if self.out.exists():
            if any(self.out.iterdir()) and not overwrite:
                raise FileExistsError(f"share: output folder {self.out} appeared meanwhile; nothing was replaced")
            old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out, old)
        os.replace(self.staging, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out
