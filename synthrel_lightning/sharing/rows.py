"""Turning frames and bank entries into rows of a shared set, and the per-shard statistics the card reports."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from synthrel_lightning.data.io import DatasetError
from synthrel_lightning.labels import OOD_POSITIVE, VOID_ID
from synthrel_lightning.sharing.format import encode_png, to_json

__all__ = ["raw_sample", "frame_row", "entry_row", "merge_stats", "source_root"]

_SAMPLE_KEYS = ("image", "label", "ood", "name")


def source_root(dataset: Any) -> Path | None:
    """The folder a dataset reads (through wrappers such as ``KeyedDataset``), or None."""
    root = getattr(dataset, "root", None)
    return None if root is None else Path(root).expanduser()


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def raw_sample(dataset: Any, index: int, who: str) -> dict[str, Any]:
    """Frame ``index`` of ``dataset`` as a raw sample (uint8 arrays); a DatasetError naming what is wrong."""
    from synthrel_lightning.data.base import SegmentationDataset

    # A file-backed dataset serves its raw sample without its transform; any other dataset (e.g. a
    # KeyedDataset mixing outliers into frames) must itself yield raw samples.
    sample = dataset.load_raw(index) if isinstance(dataset, SegmentationDataset) else dataset[index]
    if not isinstance(sample, Mapping) or any(k not in sample for k in _SAMPLE_KEYS):
        have = sorted(sample) if isinstance(sample, Mapping) else type(sample).__name__
        raise DatasetError(f"{who}: frame {index} is not a sample with keys {list(_SAMPLE_KEYS)} (got {have})")
    out = dict(sample)
    for key in ("image", "label", "ood"):
        out[key] = _array(sample[key])
    image, label, ood, name = out["image"], out["label"], out["ood"], out["name"]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DatasetError(
            f"{who}: frame {index} ({name!r}) has an image of {image.dtype} {tuple(image.shape)}; a raw uint8 "
            "(H, W, 3) image was expected: export the dataset without its transform"
        )
    for key, arr in (("label", label), ("ood", ood)):
        if arr.dtype != np.uint8 or arr.shape != image.shape[:2]:
            raise DatasetError(
                f"{who}: frame {index} ({name!r}) has a {key} of {arr.dtype} {tuple(arr.shape)}; expected uint8 "
                f"{image.shape[:2]} like its image"
            )
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{who}: frame {index} has no name (got {name!r}); frame names identify rows")
    return out


def _frame_files(dataset: Any, index: int, name: str) -> dict[str, str]:
    """The frame's files relative to the set's folder, when the dataset lists them."""
    from synthrel_lightning.data.base import Frame

    frames, root = getattr(dataset, "frames", None), source_root(dataset)
    if not isinstance(frames, list) or not 0 <= index < len(frames) or root is None:
        return {}
    frame = frames[index]
    if not isinstance(frame, Frame) or frame.name != name:
        return {}
    paths = {"image": frame.image, **({"label": frame.label} if frame.label else {}), **dict(frame.extras)}

    def rel(p: Path) -> str:
        try:
            return Path(p).relative_to(root).as_posix()
        except ValueError:
            return Path(p).name

    return {k: rel(p) for k, p in paths.items()}


def frame_row(dataset: Any, index: int, sample: dict[str, Any], compress_level: int) -> dict[str, Any]:
    """The row of one frame: PNG cells, name and metadata JSON (extra sample fields kept)."""
    image = sample["image"]
    meta: dict[str, Any] = {"height": int(image.shape[0]), "width": int(image.shape[1])}
    files = _frame_files(dataset, index, sample["name"])
    if files:
        meta["files"] = files
    extra = {k: v for k, v in sample.items() if k not in _SAMPLE_KEYS}
    if extra:
        plain = {k: _array(v).tolist() if hasattr(v, "shape") else v for k, v in extra.items()}
        meta["extra"] = json.loads(to_json(plain))
    return {
        "name": sample["name"],
        "image": encode_png(image, compress_level),
        "label": encode_png(sample["label"], compress_level),
        "ood": encode_png(sample["ood"], compress_level),
        "metadata": to_json(meta),
    }


def frame_stats(sample: dict[str, Any]) -> dict[str, Any]:
    """Counts of one frame: pixels, OOD pixels, void pixels, and its size."""
    ood = sample["ood"]
    h, w = ood.shape
    n_ood = int(np.count_nonzero(ood == OOD_POSITIVE))
    return {
        "frames": 1,
        "frames_with_ood": int(n_ood > 0),
        "pixels": int(h * w),
        "ood_pixels": n_ood,
        "void_pixels": int(np.count_nonzero(ood == VOID_ID)),
        "min_size": [int(h), int(w)],
        "max_size": [int(h), int(w)],
    }


def entry_row(key: str, entry: Any, compress_level: int) -> dict[str, Any]:
    """The row of one outlier bank entry: PNG cells and every field of the entry."""
    return {
        "key": key,
        "rgb": encode_png(entry.rgb, compress_level),
        "alpha": encode_png(entry.alpha, compress_level),
        "label": None if entry.label is None else encode_png(entry.label, compress_level),
        "label_value": int(entry.label_value),
        "name": entry.name,
        "prompt": entry.prompt,
        "source": entry.source,
        "seed": None if entry.seed is None else int(entry.seed),
        "model": entry.model,
        "created": float(entry.created),
        "kind": entry.kind,
        "metadata": to_json(entry.metadata),
    }


def entry_stats(entry: Any) -> dict[str, Any]:
    """Counts of one bank entry: by kind, OOD objects versus in-distribution controls."""
    return {
        "entries": 1,
        f"kind_{entry.kind}": 1,
        "ood_entries": int(entry.is_ood),
        "control_entries": int(not entry.is_ood),
    }


def merge_stats(total: dict[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    """Add ``part`` into ``total``: counts summed, ``min_size``/``max_size`` element-wise min/max."""
    for key, value in part.items():
        if key not in total:
            total[key] = list(value) if isinstance(value, list) else value
        elif key == "min_size":
            total[key] = [min(a, b) for a, b in zip(total[key], value)]
        elif key == "max_size":
            total[key] = [max(a, b) for a, b in zip(total[key], value)]
        else:
            total[key] += value
    return total
