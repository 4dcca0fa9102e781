"""Which frames a QC-filtered view keeps: thresholds on the per-frame QC table, and where that table lives."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["QCThresholds", "QCFilter"]

_BOUNDED = ("min_miou", "min_pixel_acc", "min_object_iou")


@dataclass(frozen=True)
class QCThresholds:
    """Per-frame thresholds of a filtered view; ``None`` leaves a criterion out.

    A frame is kept when every set criterion holds:

    * ``min_miou`` / ``min_pixel_acc``: the reference segmenter's mIoU / pixel accuracy against the
      frame's label map is at least the value, for ``reference`` (a reference name in the table) or,
      when ``reference`` is None, for every reference in the table. A frame without labelled pixels
      (nothing to compare) fails these criteria.
    * ``min_object_iou``: on frames with OOD pixels, the IoU of the re-detected object with the
      labelled OOD mask is at least the value; frames without OOD pixels pass.
    """

    min_miou: float | None = None
    min_pixel_acc: float | None = None
    min_object_iou: float | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        for name in _BOUNDED:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{type(self).__name__}: {name} must be a number in [0, 1] or None, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.reference is not None and not str(self.reference):
            raise ValueError(f"{type(self).__name__}: reference must be a reference name or None, got ''")

    @property
    def is_empty(self) -> bool:
        """True when no criterion is set (the view keeps every frame)."""
        return all(getattr(self, name) is None for name in _BOUNDED)

    @property
    def needs_references(self) -> bool:
        """True when a criterion reads reference-segmenter scores."""
        return self.min_miou is not None or self.min_pixel_acc is not None

    def as_dict(self) -> dict[str, Any]:
        """The set fields only (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def describe(self) -> str:
        """``min_miou=0.5,min_object_iou=0.3`` (the form :meth:`parse` reads)."""
        return ",".join(f"{k}={v}" for k, v in self.as_dict().items()) or "(no threshold)"

    @classmethod
    def parse(cls, text: str | Mapping[str, Any] | QCThresholds | None) -> QCThresholds:
        """Thresholds from ``"min_miou=0.5,min_object_iou=0.3,reference=segformer_b0"``, a mapping or an instance."""
        if text is None:
            return cls()
        if isinstance(text, QCThresholds):
            return cls(**{f.name: getattr(text, f.name) for f in fields(cls)})
        if isinstance(text, Mapping):
            values = dict(text)
        else:
            values = {}
            for part in str(text).replace(";", ",").split(","):
                if not part.strip():
                    continue
                key, sep, raw = part.partition("=")
                if not sep:
                    raise ValueError(f"{cls.__name__}: expected key=value in {text!r}, got {part.strip()!r}")
                key, raw = key.strip(), raw.strip()
                values[key] = raw if key in ("reference", "qc_dir") else _number(raw, key, text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown option(s) {unknown} in {text!r}; expected some of {sorted(known)}"
            )
        return cls(**values)


def _number(raw: str, key: str, text: Any) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"QC thresholds: {key}={raw!r} in {text!r} is not a number") from None
    if math.isnan(value):
        raise ValueError(f"QC thresholds: {key} is NaN in {text!r}")
    return value


@dataclass(frozen=True)
class QCFilter(QCThresholds):
    """Thresholds plus the QC output folder holding the set's table (``None``: the set's default folder).

    This is what a dataset's ``qc_filter`` argument takes, e.g. in YAML::

        class_path: synthrel_lightning.data.SyntheticFramesDataset
        init_args:
          root: outputs/domains/fog-ood
          qc_filter: {min_miou: 0.5, min_object_iou: 0.3}
    """

    qc_dir: str | None = None
