"""The per-frame object-name file beside a synthetic frame's label (``labels/<key>_object.json``).

``generate`` and ``domains`` write it for every frame with an OOD object; quality control
(:mod:`synthrel_lightning.qc.presence`) reads it to know which object to look for.
"""

from __future__ import annotations

from pathlib import Path

OBJECT_SUFFIX = "_object.json"
"""Suffix of the per-frame object-name file beside a synthetic frame's label (``labels/<key>_object.json``)."""
_LABEL_SUFFIX = "_labelTrainIds.png"


def object_sidecar(label_path: str | Path) -> Path:
    """The object-name file of a frame whose label is ``label_path`` (``<key>_labelTrainIds.png``)."""
    path = Path(label_path)
    stem = path.name[: -len(_LABEL_SUFFIX)] if path.name.endswith(_LABEL_SUFFIX) else path.stem
    return path.with_name(f"{stem}{OBJECT_SUFFIX}")


__all__ = ["OBJECT_SUFFIX", "object_sidecar"]
