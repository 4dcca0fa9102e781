"""The QC table of a set beside its frames: find it, read it (CSV or Parquet), join it to frames by name.

A set's QC table (written by ``python -m synthrel_lightning qc``) is ``frames.csv`` (one row per frame,
column ``frame``) with ``summary.json`` in the set's QC folder, by default ``<set folder>.qc`` beside the
set. A shared set carries the files as they are under ``qc/`` and one ``qc_<column>`` column per frame.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthrel_lightning.sharing.format import QC_DIR, QC_PREFIX

__all__ = ["QCSource", "find_qc_table", "read_qc_table"]

log = logging.getLogger(__name__)

QC_FRAMES = "frames.csv"
QC_SUMMARY = "summary.json"
_KEY_COLUMNS = ("frame", "name")


def _default_folder(dataset: Any) -> Path | None:
    """The QC folder of ``dataset``: its filter's ``qc_dir``, else the QC package's default, else ``<root>.qc``."""
    qc_filter = getattr(dataset, "qc_filter", None)
    qc_dir = getattr(qc_filter, "qc_dir", None)
    if qc_dir is not None:
        return Path(qc_dir).expanduser()
    root = getattr(dataset, "root", None)
    if root is None:
        return None
    try:
        from synthrel_lightning.data.qc_table import default_qc_dir
    except ImportError:
        root = Path(root).expanduser()
        return root.parent / f"{root.resolve().name}.qc"
    return Path(default_qc_dir(dataset))


def find_qc_table(dataset: Any) -> Path | None:
    """The QC table file of ``dataset`` if one exists beside it (None otherwise)."""
    folder = _default_folder(dataset)
    if folder is None:
        return None
    path = folder / QC_FRAMES
    return path if path.is_file() else None


@dataclass
class QCSource:
    """A QC table read for export: the file(s) to copy, its key column and its per-frame values."""

    path: Path
    key: str
    table: Any  # pyarrow.Table, the key column dropped, columns renamed qc_<name>
    rows: dict[str, int]
    extra_files: list[Path]

    @property
    def schema(self) -> Any:
        """The pyarrow schema of the ``qc_*`` columns."""
        return self.table.schema

    def take(self, names: list[str]) -> Any:
        """The ``qc_*`` columns of frames ``names`` (nulls for frames the table lacks), as a pyarrow Table."""
        import pyarrow as pa

        indices = pa.array([self.rows.get(n) for n in names], type=pa.int64())
        return self.table.take(indices)

    def copies(self) -> list[tuple[Path, str]]:
        """``(file, path inside the shared set)`` of the files to copy."""
        return [(self.path, f"{QC_DIR}/{self.path.name}"), *((p, f"{QC_DIR}/{p.name}") for p in self.extra_files)]


def read_qc_table(path: str | os.PathLike[str], key: str | None = None) -> QCSource:
    """Read a QC table (``.csv`` or ``.parquet``, or a QC folder holding ``frames.csv``) keyed by frame name."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / QC_FRAMES
    if not path.is_file():
        raise FileNotFoundError(f"share: QC table {path} not found (expected a .csv/.parquet file or a QC folder)")
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    except (OSError, pa.ArrowInvalid) as err:
        raise ValueError(f"share: cannot read QC table {path}: {err}") from err
    candidates = [key] if key else list(_KEY_COLUMNS)
    found = next((c for c in candidates if c in table.column_names), None)
    if found is None:
        raise ValueError(
            f"share: QC table {path} has no frame-name column {candidates} (its columns: {table.column_names})"
        )
    names = [str(v) for v in table.column(found).to_pylist()]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"share: QC table {path} lists frame {dup!r} twice")
    rest = table.drop_columns([found])
    rest = rest.rename_columns([f"{QC_PREFIX}{c}" for c in rest.column_names])
    extra = [path.parent / QC_SUMMARY] if path.name == QC_FRAMES and (path.parent / QC_SUMMARY).is_file() else []
    return QCSource(path, found, rest, {n: i for i, n in enumerate(names)}, extra)
