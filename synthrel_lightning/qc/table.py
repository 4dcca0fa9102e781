"""The per-frame QC table of a set (CSV, one row per frame) and where it lives.

Layout of a QC folder (default: ``<set folder>.qc`` beside the set, never inside it)::

    frames.csv     one row per frame (column ``frame`` = the dataset's frame name)
    summary.json   set-level summary, the references' fingerprints and the object-mask model

Columns (``<ref>`` is a reference segmenter's name, ``<cls>`` a class name with spaces as ``_``):

* ``ood_px``: pixels labelled OOD (254) in the frame's label map;
* ``<ref>.n_px``: labelled pixels compared (not void, not OOD); present once the reference scored the frame;
* ``<ref>.pixel_acc``, ``<ref>.miou``: the frame's pixel accuracy and mIoU against its label map;
* ``<ref>.tp.<cls>``, ``<ref>.fp.<cls>``, ``<ref>.fn.<cls>``: per-class pixel counts (per-class IoU
  ``tp / (tp + fp + fn)`` and accuracy ``tp / (tp + fn)`` follow, per frame or summed over frames);
* ``object.status`` (``checked``, ``no_ood``), ``object.name``, ``object.iou``, ``object.label_px``,
  ``object.detected_px``: the object-presence check of frames with OOD pixels.
"""

from __future__ import annotations

import csv
import inspect
import io
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrel_lightning.atomic import atomic_write_text

__all__ = [
    "FRAMES_FILE",
    "SUMMARY_FILE",
    "MissingQCTable",
    "QCTable",
    "class_key",
    "check_reference_name",
    "default_qc_dir",
    "check_qc_dir",
    "load_qc_table",
    "qc_command",
    "set_label",
]

FRAMES_FILE = "frames.csv"
"""The per-frame table inside a QC folder."""
SUMMARY_FILE = "summary.json"
"""The set-level summary inside a QC folder."""
OBJECT_PREFIX = "object."
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_TEXT_COLUMNS = frozenset({"frame", "object.status", "object.name"})
_COUNT_PARTS = (".n_px", ".tp.", ".fp.", ".fn.")
_COUNT_COLUMNS = frozenset({"ood_px", "object.label_px", "object.detected_px"})


class MissingQCTable(FileNotFoundError):
    """A filtered view was asked of a set that has no QC table (the message names the command that makes it)."""


def class_key(name: str) -> str:
    """A class name as it appears in column names (spaces as ``_``)."""
    return str(name).strip().replace(" ", "_")


def check_reference_name(name: str) -> str:
    """``name`` if it can prefix table columns (letters, digits, ``_``, ``-``), else a ValueError."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name == "object":
        raise ValueError(
            f"QC reference name {name!r} must be non-empty letters, digits, '_' or '-' (and not 'object'): "
            "it prefixes the table's columns"
        )
    return name


def _root(dataset_or_root: Any) -> Path:
    if isinstance(dataset_or_root, (str, os.PathLike)):
        return Path(dataset_or_root).expanduser()
    root = getattr(dataset_or_root, "root", None)
    if root is None:
        raise ValueError(f"QC: {type(dataset_or_root).__name__} has no root folder; pass qc_dir explicitly")
    return Path(root).expanduser()


def set_label(dataset: Any) -> str:
    """A readable name of a dataset for messages: ``ClassName(root=..., split=...)``."""
    extras = "".join(f", {k}={getattr(dataset, k)!r}" for k in ("split",) if hasattr(dataset, k))
    return f"{type(dataset).__name__}(root={str(getattr(dataset, 'root', '?'))!r}{extras})"


def default_qc_dir(dataset_or_root: Any) -> Path:
    """The default QC folder of a set: ``<set folder>.qc`` beside the set folder (e.g. ``outputs/domains/fog.qc``)."""
    root = _root(dataset_or_root)
    resolved = root.resolve()
    return root.parent / f"{resolved.name}.qc"


def check_qc_dir(qc_dir: str | Path | None, dataset_or_root: Any) -> Path:
    """The QC folder to use (``qc_dir`` or the default); refused when it lies inside the set's own folder."""
    root = _root(dataset_or_root)
    out = default_qc_dir(root) if qc_dir is None else Path(qc_dir).expanduser()
    if out.resolve().is_relative_to(root.resolve()):
        raise ValueError(
            f"QC: qc_dir {str(out)!r} lies inside the set folder {str(root)!r}; QC never writes into a dataset "
            f"folder: choose a folder outside it (default: {default_qc_dir(root)})"
        )
    return out


def qc_command(dataset: Any, qc_dir: str | Path | None = None) -> str:
    """The ``python -m synthrel_lightning qc`` command line that writes the QC table of ``dataset``."""
    cls = type(dataset)
    try:
        import synthrel_lightning.data as data_pkg

        public = cls.__name__ in getattr(data_pkg, "__all__", ())
    except ImportError:  # pragma: no cover - the package is always importable
        public = False
    path = f"synthrel_lightning.data.{cls.__name__}" if public else f"{cls.__module__}.{cls.__qualname__}"
    parts = ["python -m synthrel_lightning qc", f"--dataset {path}", f"--dataset.root {getattr(dataset, 'root', '?')}"]
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        params = {}
    for name in ("split", "condition", "labels"):
        if name in params and hasattr(dataset, name):
            value = getattr(dataset, name)
            value = value[0] if isinstance(value, list) and len(value) == 1 else value
            if value != params[name].default:
                parts.append(f"--dataset.{name} {value}")
    if qc_dir is not None:
        parts.append(f"--qc_dir {qc_dir}")
    parts.append("--references <reference zoo YAML>")
    return " ".join(parts)


def _parse(column: str, raw: str) -> Any:
    if raw == "":
        return None
    if column in _TEXT_COLUMNS:
        return raw
    if column in _COUNT_COLUMNS or any(p in column for p in _COUNT_PARTS):
        return int(raw)
    return float(raw)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


@dataclass
class QCTable:
    """The per-frame QC table of one set: ``rows[frame name] = {column: value}`` (None where not computed)."""

    path: Path
    columns: list[str] = field(default_factory=lambda: ["frame"])
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading
    @property
    def references(self) -> list[str]:
        """Reference segmenters that have columns in the table, in column order."""
        return [c[: -len(".n_px")] for c in self.columns if c.endswith(".n_px")]

    def classes(self, reference: str) -> list[str]:
        """The class keys of ``reference``'s per-class columns, in order."""
        prefix = f"{reference}.tp."
        return [c[len(prefix) :] for c in self.columns if c.startswith(prefix)]

    @property
    def has_objects(self) -> bool:
        """True when the table holds object-presence columns."""
        return "object.status" in self.columns

    @property
    def names(self) -> list[str]:
        """Frame names with a row, in table order."""
        return list(self.rows)

    def scored(self, name: str, reference: str) -> bool:
        """True when ``reference`` has scored frame ``name``."""
        row = self.rows.get(name)
        return row is not None and row.get(f"{reference}.n_px") is not None

    def object_checked(self, name: str) -> bool:
        """True when the object-presence check ran on frame ``name``."""
        row = self.rows.get(name)
        return row is not None and row.get("object.status") is not None

    def get(self, name: str, column: str) -> Any:
        """The value of ``column`` for frame ``name`` (None if absent)."""
        return self.rows.get(name, {}).get(column)

    # ------------------------------------------------------------------ writing
    def update(self, name: str, values: Mapping[str, Any]) -> None:
        """Set ``values`` (column -> value) on frame ``name``'s row, adding the row and new columns."""
        row = self.rows.setdefault(str(name), {"frame": str(name)})
        for column, value in values.items():
            if column not in self.columns:
                self.columns.append(column)
            row[column] = value

    def drop_columns(self, prefix: str) -> int:
        """Remove every column starting with ``prefix`` (e.g. a reference whose weights changed); returns how many."""
        gone = [c for c in self.columns if c.startswith(prefix)]
        self.columns = [c for c in self.columns if c not in gone]
        for row in self.rows.values():
            for c in gone:
                row.pop(c, None)
        return len(gone)

    def to_csv(self) -> str:
        """The table as CSV text."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows.values():
            writer.writerow([_format(row.get(c)) for c in self.columns])
        return buf.getvalue()

    def save(self) -> Path:
        """Write the table atomically (a reader never sees a half-written file)."""
        return atomic_write_text(self.path, self.to_csv())

    @classmethod
    def read(cls, path: str | Path) -> QCTable:
        """Read a table written by :meth:`save`; a clear error for a file that is not one."""
        path = Path(path)
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise ValueError(f"QC table {path} is empty; rerun qc to rewrite it") from None
            if not header or header[0] != "frame":
                raise ValueError(f"{path} is not a QC table: its first column is {header[:1]}, expected 'frame'")
            table = cls(path, list(header), {})
            for lineno, values in enumerate(reader, start=2):
                if len(values) != len(header):
                    raise ValueError(
                        f"QC table {path} line {lineno}: {len(values)} fields, expected {len(header)}; "
                        "rerun qc to rewrite it"
                    )
                try:
                    table.rows[values[0]] = {c: _parse(c, v) for c, v in zip(header, values)}
                except ValueError as e:
                    raise ValueError(f"QC table {path} line {lineno}: {e}; rerun qc to rewrite it") from None
        return table


def load_qc_table(where: str | Path | Any, qc_dir: str | Path | None = None) -> QCTable:
    """The QC table of a set: ``where`` is a QC folder, a ``frames.csv`` path, or a dataset (then ``qc_dir`` or
    its default folder). A missing table raises :class:`MissingQCTable` naming the command that makes it."""
    if isinstance(where, (str, Path)):
        path = Path(where).expanduser()
        path = path if path.suffix == ".csv" else path / FRAMES_FILE
        if not path.is_file():
            raise MissingQCTable(
                f"no QC table at {path}; write it with `python -m synthrel_lightning qc --dataset <dataset class> "
                f"--dataset.root <set folder> --qc_dir {path.parent} --references <reference zoo YAML>`"
            )
        return QCTable.read(path)
    folder = check_qc_dir(qc_dir, where)
    path = folder / FRAMES_FILE
    if not path.is_file():
        raise MissingQCTable(
            f"{set_label(where)}: a QC filter was asked but the set has no QC table ({path} does not exist); "
            f"make it with: {qc_command(where, qc_dir)}"
        )
    return QCTable.read(path)


def frames_missing(table: QCTable, names: Iterable[str]) -> list[str]:
    """Names without a row in ``table``."""
    return [n for n in names if n not in table.rows]
