"""A shared frame set (local folder or Hub id) as a named evaluation set: :class:`HubFramesDataset`."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from synthrel_lightning.data.base import Frame, OnError, Sample, SegmentationDataset, Transform
from synthrel_lightning.data.io import DatasetError, check_label_values, describe_values
from synthrel_lightning.data.qc_thresholds import QCFilter
from synthrel_lightning.labels import NUM_CLASSES, OOD_ID, OOD_NEGATIVE, OOD_POSITIVE, VOID_ID
from synthrel_lightning.sharing.format import FRAME_COLUMNS, QC_DIR, QC_PREFIX, decode_png
from synthrel_lightning.sharing.source import SharedTable, resolve_source

__all__ = ["HubFramesDataset"]

_REQUIRED = ("name", "image", "label", "ood")
_LABEL_VALUES = frozenset(range(NUM_CLASSES)) | {OOD_ID, VOID_ID}
_OOD_VALUES = (OOD_NEGATIVE, OOD_POSITIVE, VOID_ID)


class HubFramesDataset(SegmentationDataset):
    """The frames of one split of a shared set, served as raw samples like any file-backed dataset.

    ``source`` is a folder written by :func:`~synthrel_lightning.sharing.export_frames` (or any Parquet
    dataset with ``name``, ``image``, ``label`` and ``ood`` image columns) or a Hub dataset id
    (``owner/name``, downloaded once into the Hub cache at ``revision``). Use it wherever an evaluation
    set is taken, e.g. in YAML::

        extra_val_sets:
          road_anomaly:
            class_path: synthrel_lightning.sharing.HubFramesDataset
            init_args: {source: my-lab/road-anomaly, split: test}

    Samples are bit-identical to those of the exported set; :meth:`metadata` and :meth:`qc` give each
    frame's stored metadata and QC row. ``has_semantics``/``has_ood`` follow the exported set.
    ``qc_filter`` (e.g. ``{min_miou: 0.5, min_object_iou: 0.3}``) serves the QC-filtered view, read
    from the QC table shared with the set (its ``qc/`` folder) unless the filter names a ``qc_dir``.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        split: str = "test",
        revision: str | None = None,
        token: str | None = None,
        transform: Transform | None = None,
        on_error: OnError = "raise",
        max_samples: int | None = None,
        qc_filter: QCFilter | Mapping[str, Any] | str | None = None,
    ) -> None:
        self.source = os.fspath(source)
        self.split = split
        self.revision = revision
        folder = resolve_source(source, revision=revision, token=token, split=split)
        self.table = SharedTable(folder, split, _REQUIRED, "name")
        sets = self.table.manifest.get("provenance", {}).get("sets", {})
        described = sets.get(split) or (next(iter(sets.values())) if len(sets) == 1 else {})
        self.has_semantics = bool(described.get("has_semantics", True))  # type: ignore[misc]
        self.has_ood = bool(described.get("has_ood", True))  # type: ignore[misc]
        self._rows: dict[str, int] = {}
        super().__init__(
            folder,
            transform=transform,
            on_error=on_error,
            max_samples=max_samples,
            qc_filter=_shared_qc_filter(qc_filter, folder),
        )

    def _index(self) -> list[Frame]:
        frames = []
        for i, name in enumerate(self.table.keys):
            if name in self._rows:
                raise DatasetError(f"{type(self).__name__}: {self.source!r} split {self.split!r} names {name!r} twice")
            self._rows[name] = i
            frames.append(Frame(name, self.table.file_of(i)))
        return frames

    def _where(self, name: str) -> str:
        return f"{type(self).__name__}({self.source!r}, split={self.split!r}) frame {name!r}"

    def _load(self, frame: Frame) -> Sample:
        row = self.table.row(self._rows[frame.name], _REQUIRED)
        where = self._where(frame.name)
        try:
            image = decode_png(row["image"], 3, f"{where} image")
            label = decode_png(row["label"], 1, f"{where} label")
            ood = decode_png(row["ood"], 1, f"{where} ood")
        except ValueError as err:
            raise DatasetError(str(err)) from err
        for key, arr in (("label", label), ("ood", ood)):
            if arr.shape != image.shape[:2]:
                raise DatasetError(f"{where}: {key} is {arr.shape[::-1]} (W, H) but the image is {image.shape[1::-1]}")
        check_label_values(label, _LABEL_VALUES, where, "label values (train ids 0..18, OOD 254, void 255)")
        bad = np.setdiff1d(np.unique(ood), np.asarray(_OOD_VALUES))
        if bad.size:
            raise DatasetError(f"{where}: OOD values {describe_values(bad.tolist())} (expected 0, 1 and 255)")
        return {"image": image, "label": label, "ood": ood, "name": frame.name}

    def _named_row(self, index: int, columns: tuple[str, ...]) -> dict[str, Any]:
        self.check_frames()
        return self.table.row(self._rows[self.frames[index].name], columns)

    def metadata(self, index: int) -> dict[str, Any]:
        """The stored metadata of frame ``index`` (``{}`` when the set has no ``metadata`` column)."""
        if "metadata" not in self.table.columns:
            return {}
        text = self._named_row(index, ("metadata",))["metadata"]
        return json.loads(text) if text else {}

    @property
    def qc_columns(self) -> list[str]:
        """The per-frame QC columns of the set (without the ``qc_`` prefix)."""
        return [c[len(QC_PREFIX) :] for c in self.table.columns if c.startswith(QC_PREFIX)]

    def qc(self, index: int) -> dict[str, Any]:
        """The QC row of frame ``index`` (column -> value; None where the table had no value)."""
        columns = tuple(QC_PREFIX + c for c in self.qc_columns)
        row = self._named_row(index, columns) if columns else {}
        return {c[len(QC_PREFIX) :]: v for c, v in row.items()}

    @property
    def extra_columns(self) -> list[str]:
        """Columns beyond the frame columns and the QC columns."""
        return [c for c in self.table.columns if c not in FRAME_COLUMNS and not c.startswith(QC_PREFIX)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, split={self.split!r}, frames={len(self.frames)})"


def _shared_qc_filter(qc_filter: QCFilter | Mapping[str, Any] | str | None, folder: Path) -> QCFilter | None:
    """A QC filter reading the QC table shared inside the set (``qc/``) unless it names another folder."""
    if qc_filter is None:
        return None
    flt = qc_filter if isinstance(qc_filter, QCFilter) else QCFilter.parse(qc_filter)
    if flt.qc_dir is None and (folder / QC_DIR / "frames.csv").is_file():
        flt = dataclasses.replace(flt, qc_dir=str(folder / QC_DIR))
    return flt
