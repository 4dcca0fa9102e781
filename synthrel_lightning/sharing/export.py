"""Exporting an evaluation set, a domain set or an outlier bank as a shared set (a ``datasets`` Parquet dataset).

See :mod:`synthrel_lightning.sharing.format` for the layout. Frames are read one at a time and written
row group by row group, so memory holds at most one row group of encoded frames whatever the set's size.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from synthrel_lightning.sharing.card import render_card
from synthrel_lightning.sharing.format import (
    CARD,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    bank_features,
    frame_features,
)
from synthrel_lightning.sharing.qc_join import QCSource, find_qc_table, read_qc_table
from synthrel_lightning.sharing.rows import (
    entry_row,
    entry_stats,
    frame_row,
    frame_stats,
    merge_stats,
    raw_sample,
    source_root,
)
from synthrel_lightning.sharing.writer import SetWriter, check_output, fingerprint

__all__ = ["export_frames", "export_bank"]

log = logging.getLogger(__name__)

_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")


def _check_limits(**limits: int) -> None:
    for name, value in limits.items():
        if isinstance(value, bool) or int(value) < 1:
            raise ValueError(f"share: {name} must be a positive integer, got {value!r}")


def _check_split(split: str) -> str:
    if not isinstance(split, str) or not _SPLIT_RE.match(split):
        raise ValueError(f"share: split name {split!r} must be letters, digits or '_' (e.g. 'test', 'validation')")
    return split


def _library_version() -> str:
    try:
        from importlib.metadata import version

        return version("synthrel-lightning")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "unknown"


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _dataset_provenance(dataset: Any) -> dict[str, Any]:
    """What the set is: its class, folder name, split/condition, mixer and demo settings when it has them."""
    out: dict[str, Any] = {"dataset": _class_path(dataset)}
    base = getattr(dataset, "base", None)
    if base is not None and isinstance(getattr(dataset, "__dict__", {}).get("base"), Dataset):
        out["base"] = _class_path(base)
    mixer = getattr(dataset, "__dict__", {}).get("mixer")
    if mixer is not None:
        out["mixer"] = _class_path(mixer)
        for attr in ("source", "placement"):
            if getattr(mixer, attr, None) is not None:
                out[f"mixer_{attr}"] = _class_path(getattr(mixer, attr))
        for attr in ("seed", "probability", "num_objects"):
            if hasattr(mixer, attr):
                out[f"mixer_{attr}"] = getattr(mixer, attr)
        out["mixer_epoch"] = getattr(dataset, "fixed_epoch", None)
    root = source_root(dataset)
    if root is not None:
        out["folder"] = root.resolve().name
        marker = root / ".synthrel-demo.json"
        if marker.is_file():
            out["demo_scenes"] = json.loads(marker.read_text(encoding="utf-8"))
    for attr in ("split", "condition", "max_samples"):
        value = getattr(dataset, attr, None)
        if value is not None and not callable(value):
            out[attr] = value
    out["has_semantics"] = bool(getattr(dataset, "has_semantics", True))
    out["has_ood"] = bool(getattr(dataset, "has_ood", False)) or mixer is not None
    return json.loads(json.dumps(out, default=str))


def _default_title(sets: Mapping[str, Any]) -> str:
    first = next(iter(sets.values()))
    root = source_root(first)
    return type(first).__name__ + (f" ({root.resolve().name})" if root is not None else "")


def _identity(dataset: Any) -> Any:
    """What a resumed export must find unchanged: frame names when the dataset lists them, else its repr."""
    names = getattr(dataset, "names", None)
    described = _dataset_provenance(dataset)  # class, folder, split, mixer settings
    if isinstance(names, list):
        return [described, len(names), fingerprint(names)]
    return [described, repr(dataset)]


def _write_split(
    writer: SetWriter,
    split: str,
    count: int,
    schema: Any,
    make: Callable[[int], tuple[dict[str, Any], dict[str, Any]]],
    max_shard_rows: int,
    row_group_rows: int,
    extra_columns: Callable[[list[dict[str, Any]]], Any] | None = None,
) -> None:
    """Write rows ``0..count-1`` of ``split`` (``make(i) -> (row, stats)``), resuming after the shards done."""
    import pyarrow as pa

    start = sum(r["rows"] for r in writer.shards_done(split))
    i = start
    while i < count:
        with writer.shard(split, schema) as shard:
            while i < count and shard.rows < max_shard_rows:
                rows = []
                for j in range(i, min(count, i + row_group_rows, i + max_shard_rows - shard.rows)):
                    row, stats = make(j)
                    rows.append(row)
                    merge_stats(shard.stats, stats)
                table = pa.Table.from_pylist(rows, schema=schema)  # absent keys (the qc_* columns) as nulls
                if extra_columns is not None:
                    for field, column in zip(*extra_columns(rows)):
                        table = table.set_column(table.schema.get_field_index(field.name), field, column)
                shard.write(table.replace_schema_metadata(schema.metadata))
                i += len(rows)
        log.info("share: %s: %d/%d rows written", split, i, count)


def _finish(
    writer: SetWriter,
    manifest: dict[str, Any],
    features: Any,
    license: str | None,
    overwrite: bool,
    qc: QCSource | None = None,
) -> dict[str, Any]:
    files = writer.finalize_names()
    manifest["splits"] = {}
    manifest["counts"] = {}
    for split, names in files.items():
        records = writer.shards_done(split)
        stats: dict[str, Any] = {}
        for r in records:
            merge_stats(stats, r["stats"])
        manifest["splits"][split] = {
            "files": names,
            "num_rows": sum(r["rows"] for r in records),
            "num_bytes": sum(r["num_bytes"] for r in records),
        }
        manifest["counts"][split] = stats
    if qc is not None:
        for source, relative in qc.copies():
            writer.copy_file(source, relative)
    writer.write_text(MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
    writer.write_text(CARD, render_card(manifest, features, license))
    out = writer.publish(overwrite)
    total = sum(s["num_rows"] for s in manifest["splits"].values())
    log.info("share: wrote %s (%d rows in %d splits)", out, total, len(manifest["splits"]))
    return {"out": str(out), **manifest}


def _sets(dataset: Dataset[Any] | Mapping[str, Dataset[Any]], split: str) -> dict[str, Any]:
    sets = dict(dataset) if isinstance(dataset, Mapping) else {split: dataset}
    if not sets:
        raise ValueError("share: no dataset to export")
    for name in sets:
        _check_split(name)
    return sets


def export_frames(
    dataset: Dataset[Any] | Mapping[str, Dataset[Any]],
    out: str | os.PathLike[str],
    split: str = "test",
    qc_table: str | os.PathLike[str] | None = None,
    with_qc: bool = True,
    qc_key: str | None = None,
    provenance: dict[str, Any] | None = None,
    pretty_name: str | None = None,
    license: str | None = None,
    max_shard_frames: int = 128,
    row_group_frames: int = 4,
    compress_level: int = 6,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export an evaluation or domain set (or ``{split: dataset}``) as a shared set in folder ``out``.

    Args:
        dataset: any dataset of raw samples (``image``/``label``/``ood`` uint8, ``name``): a
            :class:`~synthrel_lightning.data.base.SegmentationDataset` (read with ``load_raw``, without its
            transform) or a wrapper yielding raw samples (e.g. a ``KeyedDataset`` mixing outliers in); a
            mapping exports one split per entry.
        out: the output folder (new or empty; a non-empty one only with ``overwrite``); never inside the set.
        split: the split name of a single dataset.
        qc_table: the set's QC table (``.csv``/``.parquet`` or a QC folder); ``None`` takes the set's own table
            beside it (``<set folder>.qc/frames.csv``) when one exists and ``with_qc``.
        qc_key: the table's frame-name column (default ``frame``, else ``name``).
        provenance: extra provenance for the card (e.g. ``{"generator": ..., "protocol": ...}``).
        pretty_name / license: the card's title and licence identifier (e.g. ``cc-by-sa-4.0``).
        max_shard_frames / row_group_frames: frames per Parquet shard and per row group (the memory bound).
        compress_level: PNG compression (0-9; lossless at every level).

    Returns the manifest (with ``out``). Interrupted exports resume when run again with the same arguments.
    """
    _check_limits(max_shard_frames=max_shard_frames, row_group_frames=row_group_frames)
    sets = _sets(dataset, split)
    out_path = Path(out).expanduser()
    roots = [r for r in (source_root(d) for d in sets.values()) if r is not None]
    check_output(out_path, roots, overwrite)
    qc: QCSource | None = None
    if qc_table is not None:
        qc = read_qc_table(qc_table, qc_key)
    elif with_qc:
        found = [p for p in (find_qc_table(d) for d in sets.values()) if p is not None]
        if len(sets) > 1 and found:
            log.warning("share: several splits; give qc_table explicitly to include a QC table (found %s)", found)
        elif found:
            qc = read_qc_table(found[0], qc_key)
    features = frame_features(qc.schema if qc is not None else None)
    schema = features.arrow_schema
    settings = [max_shard_frames, row_group_frames, compress_level]
    qc_id = None if qc is None else [str(qc.path), qc.path.stat().st_size, qc.path.stat().st_mtime_ns]
    key = fingerprint(["frames", {s: _identity(d) for s, d in sets.items()}, settings, qc_id])
    writer = SetWriter(out_path, key)
    for name, ds in sets.items():
        who = f"share {name}: {type(ds).__name__}"
        count = len(ds)

        def make(i: int, ds: Any = ds, who: str = who) -> tuple[dict[str, Any], dict[str, Any]]:
            sample = raw_sample(ds, i, who)
            return frame_row(ds, i, sample, compress_level), frame_stats(sample)

        def qc_columns(rows: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
            part = qc.take([r["name"] for r in rows])  # type: ignore[union-attr]
            return [schema.field(f.name) for f in part.schema], [part.column(f.name) for f in part.schema]

        _write_split(writer, name, count, schema, make, max_shard_frames, row_group_frames, qc_columns if qc else None)
        _check_unique_names(writer, name)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": "frames",
        "pretty_name": pretty_name or _default_title(sets),
        "provenance": {
            **(provenance or {}),
            "sets": {s: _dataset_provenance(d) for s, d in sets.items()},
            "exported_with": f"synthrel-lightning {_library_version()}",
            "exported": datetime.date.today().isoformat(),
        },
    }
    if qc is not None:
        manifest["qc"] = {
            "files": [rel for _, rel in qc.copies()],
            "key": qc.key,
            "rows": len(qc.rows),
            "matched": _count_matched(writer, qc),
            "columns": list(qc.schema.names),
        }
    return _finish(writer, manifest, features, license, overwrite, qc)


def _split_names(writer: SetWriter, split: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    for record in writer.shards_done(split):
        yield from pq.read_table(writer.staging / record["file"], columns=["name"]).column("name").to_pylist()


def _check_unique_names(writer: SetWriter, split: str) -> None:
    seen: set[str] = set()
    for name in _split_names(writer, split):
        if name in seen:
            raise ValueError(f"share {split}: frame name {name!r} occurs twice; frame names must be unique in a set")
        seen.add(name)


def _count_matched(writer: SetWriter, qc: QCSource) -> int:
    """Exported frames with a QC row (counted from the shards: a resumed export wrote some of them earlier)."""
    return sum(1 for split in writer.done for n in _split_names(writer, split) if n in qc.rows)


def export_bank(
    bank: Any,
    out: str | os.PathLike[str],
    split: str = "train",
    provenance: dict[str, Any] | None = None,
    pretty_name: str | None = None,
    license: str | None = None,
    max_shard_entries: int = 1024,
    row_group_entries: int = 64,
    compress_level: int = 6,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export an outlier bank (an :class:`~synthrel_lightning.synthesis.OutlierBank` or its folder) as a shared set.

    Entries are written in the bank's key order, every field kept; a corrupt entry stops the export
    naming it. Other arguments as :func:`export_frames`.
    """
    from synthrel_lightning.synthesis.bank import OutlierBank

    _check_limits(max_shard_entries=max_shard_entries, row_group_entries=row_group_entries)
    _check_split(split)
    if not isinstance(bank, OutlierBank):
        folder = Path(bank).expanduser()
        if not (folder / "bank.json").is_file():
            raise FileNotFoundError(f"share: {folder} is not an outlier bank (no bank.json marker)")
        bank = OutlierBank(folder, mode="r")
    out_path = Path(out).expanduser()
    check_output(out_path, [bank.root], overwrite)
    bank.refresh()
    keys = bank.keys()
    if not keys:
        raise ValueError(f"share: outlier bank {bank.root} holds no entries")
    features = bank_features()
    settings = [max_shard_entries, row_group_entries, compress_level]
    writer = SetWriter(out_path, fingerprint(["bank", str(bank.root.resolve()), fingerprint(keys), settings]))

    def make(i: int) -> tuple[dict[str, Any], dict[str, Any]]:
        entry = bank.get(keys[i])
        return entry_row(keys[i], entry, compress_level), entry_stats(entry)

    _write_split(writer, split, len(keys), features.arrow_schema, make, max_shard_entries, row_group_entries)
    marker = json.loads((bank.root / "bank.json").read_text(encoding="utf-8"))
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": "bank",
        "pretty_name": pretty_name or f"Outlier bank {bank.root.resolve().name}",
        "provenance": {
            **(provenance or {}),
            "bank": bank.root.resolve().name,
            "bank_format": {k: marker.get(k) for k in ("format", "version", "num_shards")},
            "exported_with": f"synthrel-lightning {_library_version()}",
            "exported": datetime.date.today().isoformat(),
        },
    }
    return _finish(writer, manifest, features, license, overwrite)
