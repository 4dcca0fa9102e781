"""Tables of the study written as CSV, JSON and Markdown, each file atomically."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from synthrel_lightning.atomic import atomic_write_json, atomic_write_text


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as CSV with ``columns`` in order (missing and non-finite values empty)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
        w.writerow(cells)
    return buf.getvalue()


def write_table_files(
    output_dir: str | Path,
    tables: Mapping[str, tuple[Sequence[Mapping[str, Any]], Sequence[str]]],
    json_name: str | None = None,
    payload: Any = None,
    markdown_name: str | None = None,
    markdown: str | None = None,
) -> dict[str, list[str]]:
    """Write ``<name>.csv`` for each table, plus an optional JSON payload and Markdown page; the paths by kind."""
    out = Path(output_dir)
    files: dict[str, list[str]] = {"csv": []}
    for name, (rows, columns) in tables.items():
        files["csv"].append(str(atomic_write_text(out / f"{name}.csv", csv_text(rows, columns))))
    if json_name is not None:
        files["json"] = [str(atomic_write_json(out / json_name, payload))]
    if markdown_name is not None and markdown is not None:
        files["markdown"] = [str(atomic_write_text(out / markdown_name, markdown))]
    return files


__all__ = ["csv_text", "write_table_files"]
