"""The shared-set format: file names, the manifest, the columns of frame and bank sets, lossless PNG cells.

A shared set is a folder (or a Hugging Face Hub dataset repository holding the same files)::

    README.md               dataset card: YAML header (configs/data_files, features, splits) + provenance
    synthrel_share.json     manifest: kind, splits with their shard files and row counts, columns, provenance
    data/<split>-00000-of-000NN.parquet   Parquet shards, bounded number of rows each
    qc/frames.csv [qc/summary.json]       the set's QC table, copied as is (when one exists)

Frame sets (evaluation and domain sets) have one row per frame: ``name``, ``image`` (RGB),
``label`` and ``ood`` (single-channel), ``metadata`` (JSON text) and one ``qc_<column>`` per QC
column. Bank sets have one row per outlier entry: ``key``, ``rgb``, ``alpha``, ``label`` (frame
entries only), ``label_value``, ``name``, ``prompt``, ``source``, ``seed``, ``model``, ``created``,
``kind``, ``metadata``. Image cells are :class:`datasets.Image` structs (``{"bytes", "path"}``) holding
lossless PNG bytes, so pixels and labels round-trip bit for bit.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

__all__ = [
    "MANIFEST",
    "CARD",
    "DATA_DIR",
    "QC_DIR",
    "QC_PREFIX",
    "FORMAT",
    "FORMAT_VERSION",
    "FRAME_COLUMNS",
    "BANK_COLUMNS",
    "frame_features",
    "bank_features",
    "encode_png",
    "decode_png",
    "shard_name",
    "to_json",
    "require_hub_extra",
]

FORMAT = "synthrel-shared-set"
FORMAT_VERSION = 1
MANIFEST = "synthrel_share.json"
"""The manifest file at the top of a shared set."""
CARD = "README.md"
"""The dataset card (``datasets`` reads its YAML header)."""
DATA_DIR = "data"
"""The folder of the Parquet shards."""
QC_DIR = "qc"
"""The folder the set's QC table is copied into."""
QC_PREFIX = "qc_"
"""Prefix of the per-frame QC columns."""

FRAME_COLUMNS: tuple[str, ...] = ("name", "image", "label", "ood", "metadata")
"""Columns every frame set has (``qc_*`` columns may follow)."""
BANK_COLUMNS: tuple[str, ...] = (
    "key",
    "rgb",
    "alpha",
    "label",
    "label_value",
    "name",
    "prompt",
    "source",
    "seed",
    "model",
    "created",
    "kind",
    "metadata",
)
"""Columns of a bank set."""


def require_hub_extra(what: str) -> Any:
    """The ``datasets`` module, or an ImportError saying which extra installs it."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - the test environment has it
        raise ImportError(
            f"{what} needs the Hugging Face `datasets` package: pip install 'synthrel-lightning[hub]'"
        ) from err
    return datasets


def frame_features(qc_schema: Any = None) -> Any:
    """The :class:`datasets.Features` of a frame set (``qc_schema``: a pyarrow schema of extra ``qc_*`` columns)."""
    datasets = require_hub_extra("sharing a set")
    features = {
        "name": datasets.Value("string"),
        "image": datasets.Image(),
        "label": datasets.Image(),
        "ood": datasets.Image(),
        "metadata": datasets.Value("string"),
    }
    if qc_schema is not None:
        features.update(datasets.Features.from_arrow_schema(qc_schema))
    return datasets.Features(features)


def bank_features() -> Any:
    """The :class:`datasets.Features` of a bank set."""
    datasets = require_hub_extra("sharing an outlier bank")
    text = datasets.Value("string")
    return datasets.Features(
        {
            "key": text,
            "rgb": datasets.Image(),
            "alpha": datasets.Image(),
            "label": datasets.Image(),
            "label_value": datasets.Value("int64"),
            "name": text,
            "prompt": text,
            "source": text,
            "seed": datasets.Value("int64"),
            "model": text,
            "created": datasets.Value("float64"),
            "kind": text,
            "metadata": text,
        }
    )


def encode_png(array: np.ndarray, compress_level: int = 6) -> dict[str, Any]:
    """A uint8 (H, W) or (H, W, 3) array as a :class:`datasets.Image` cell holding lossless PNG bytes."""
    from PIL import Image

    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected a uint8 (H, W) or (H, W, 3) array, got {array.dtype} {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"cannot store an empty {array.shape} array as PNG")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=int(compress_level))
    return {"bytes": buf.getvalue(), "path": None}


def decode_png(cell: Any, channels: int, what: str) -> np.ndarray:
    """The uint8 array of an image cell: (H, W, 3) for ``channels=3``, (H, W) for 1; ValueError naming ``what``."""
    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if data is None:
        raise ValueError(f"{what}: the image cell holds no bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if channels == 3:
                out = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
            elif img.mode in ("L", "P"):
                out = np.asarray(img)  # palette images hold the values as indices
            else:
                raise ValueError(f"a single-channel (mode L or P) image was expected, got mode {img.mode}")
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{what}: cannot decode the image bytes ({err})") from err
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from err
    return np.array(out, dtype=np.uint8)  # a writable copy, as read_image returns


def shard_name(split: str, index: int, count: int) -> str:
    """``data/<split>-<index>-of-<count>.parquet``, the shard naming the Hub uses."""
    return f"{DATA_DIR}/{split}-{index:05d}-of-{count:05d}.parquet"


def to_json(value: Any) -> str:
    """Compact, key-sorted JSON (non-JSON values as their ``str``), the form metadata is stored in."""
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
