"""Object presence: does the generated frame show the named OOD object where its label says?

GenVal (Loiseau et al., ECCV 2024; github.com/valeoai/GenVal) runs Grounding DINO + SAM on the
inpainted square and drops an inpainting whose object it cannot find. We run the same kind of
object-mask model (the :class:`~synthrel_lightning.synthesis.object_masks.ObjectMasker` that
``generate`` uses, e.g. :class:`~synthrel_lightning.synthesis.object_masks.OpenVocabMasker`) on
the square around the labelled OOD mask of every frame with OOD pixels, inpainted and joint
shift+OOD alike, and record the IoU of its mask with the labelled one (0 when nothing is found).

The object's name comes, per frame, from ``labels/<key>_object.json`` beside the label (written by
``generate`` and ``domains``), else from an ``object_names`` source: a JSON file
``{frame name: object}``, an outlier bank (inpainted sets: entry ``<key>`` or ``<key>-frame``) or a mapping.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from synthrel_lightning.synthesis.geometry import Box

__all__ = ["OBJECT_SUFFIX", "ObjectNames", "object_sidecar", "check_masker", "object_columns", "presence_crop"]

OBJECT_SUFFIX = "_object.json"
"""Suffix of the per-frame object-name file beside a synthetic frame's label (``labels/<key>_object.json``)."""
_LABEL_SUFFIX = "_labelTrainIds.png"


def object_sidecar(label_path: str | Path) -> Path:
    """The object-name file of a frame whose label is ``label_path`` (``<key>_labelTrainIds.png``)."""
    path = Path(label_path)
    stem = path.name[: -len(_LABEL_SUFFIX)] if path.name.endswith(_LABEL_SUFFIX) else path.stem
    return path.with_name(f"{stem}{OBJECT_SUFFIX}")


class ObjectNames:
    """Finds the OOD object's name of each frame: sidecar file, then ``source`` (JSON file, bank folder, mapping)."""

    def __init__(self, source: str | Path | Mapping[str, str] | Callable[[str], str | None] | None = None) -> None:
        self.source = source
        self._lookup: Callable[[str], str | None] | None = None
        if source is None:
            return
        if callable(source):
            self._lookup = source
        elif isinstance(source, Mapping):
            self._lookup = lambda name, m=dict(source): m.get(name)
        else:
            path = Path(source).expanduser()
            if path.is_dir() and (path / "bank.json").is_file():
                self._lookup = self._bank_lookup(path)
            elif path.is_file():
                try:
                    mapping = json.loads(path.read_text(encoding="utf-8"))
                except ValueError as e:
                    raise ValueError(f"QC object_names {path}: not JSON ({e}); expected {{frame name: object}}") from e
                if not isinstance(mapping, dict):
                    raise ValueError(f"QC object_names {path}: expected a JSON object {{frame name: object}}")
                self._lookup = lambda name, m=mapping: m.get(name)
            else:
                raise FileNotFoundError(
                    f"QC object_names {path}: neither a JSON file {{frame name: object}} nor an outlier bank folder"
                )

    @staticmethod
    def _bank_lookup(path: Path) -> Callable[[str], str | None]:
        from synthrel_lightning.synthesis.bank import OutlierBank

        bank = OutlierBank(path, mode="r")

        def lookup(name: str) -> str | None:
            for key in (name, f"{name}-frame"):
                if key in bank:
                    return bank.get(key).name or None
            return None

        return lookup

    def __call__(self, name: str, label_path: str | Path | None) -> str | None:
        """The object name of frame ``name`` (None if no source knows it)."""
        if label_path is not None:
            sidecar = object_sidecar(label_path)
            if sidecar.is_file():
                try:
                    payload = json.loads(sidecar.read_text(encoding="utf-8"))
                    found = payload.get("object") if isinstance(payload, dict) else None
                except ValueError as e:
                    raise ValueError(f"QC: object-name file {sidecar} is not JSON ({e})") from e
                if found:
                    return str(found)
        return None if self._lookup is None else self._lookup(name)


def check_masker(masker: Any) -> None:
    """Refuse object-mask models that cannot re-detect an object in a finished frame."""
    from synthrel_lightning.synthesis.object_masks import BoxMasker, ObjectMasker

    if not isinstance(masker, ObjectMasker):
        raise TypeError(f"QC masker must be an ObjectMasker (e.g. OpenVocabMasker), got {type(masker).__name__}")
    if isinstance(masker, BoxMasker):
        raise ValueError(
            "QC masker: BoxMasker returns the box whatever the image holds, so it cannot check object presence; "
            "use the open-vocabulary masker (OpenVocabMasker, mask method 'open_vocab')"
        )
    if getattr(masker, "compares_to_original", False):
        raise ValueError(
            f"QC masker: {type(masker).__name__} finds objects by comparing with the frame before inpainting, "
            "which a finished set does not keep; use the open-vocabulary masker (OpenVocabMasker)"
        )


def presence_crop(mask: np.ndarray, context: float = 1.0) -> tuple[Box, Box]:
    """(crop square in the frame, the object's square in crop coordinates) around a bool OOD mask.

    The crop is the square of side ``context * max(bbox height, bbox width)`` (at most the frame's
    short side) centred on the mask's bounding box and moved inside the frame.
    """
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    h, w = mask.shape
    obj_side = min(max(y1 - y0, x1 - x0), h, w)
    side = min(max(obj_side, int(math.ceil(obj_side * float(context)))), h, w)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    top = int(min(max(round(cy - side / 2.0), 0), h - side))
    left = int(min(max(round(cx - side / 2.0), 0), w - side))
    crop = Box(left, top, side)
    inner_x = int(min(max(x0 - left, 0), side - obj_side))
    inner_y = int(min(max(y0 - top, 0), side - obj_side))
    return crop, Box(inner_x, inner_y, obj_side)


def object_columns(masker: Any, image: np.ndarray, ood_mask: np.ndarray, name: str, context: float = 1.0
                   ) -> dict[str, Any]:  # fmt: skip
    """Re-detect ``name`` in the square around ``ood_mask``; the ``object.*`` columns (IoU with the labelled mask)."""
    crop_box, inner = presence_crop(ood_mask, context)
    crop = np.ascontiguousarray(image[crop_box.slices])
    labelled = ood_mask[crop_box.slices]
    found = np.asarray(masker.find(crop, crop, inner, name), dtype=bool)
    if found.shape != labelled.shape:
        raise ValueError(f"QC masker {type(masker).__name__} returned a {found.shape} mask for a {labelled.shape} crop")
    inter = int(np.count_nonzero(found & labelled))
    union = int(np.count_nonzero(found | labelled))
    return {
        "object.status": "checked",
        "object.name": name,
        "object.iou": inter / union if union else 0.0,
        "object.label_px": int(np.count_nonzero(ood_mask)),
        "object.detected_px": int(np.count_nonzero(found)),
    }
