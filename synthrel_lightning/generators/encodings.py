"""Conditioning encodings of Cityscapes label maps for ControlNets, shared by training and generation.

A :class:`LabelEncoding` turns a map of Cityscapes label ids (0..33) into a float
conditioning image (C, H, W) in [0, 1] through a lookup table. The encoding a ControlNet
was trained with travels with it as ``synthrel_encoding.json`` in its folder, and is
checked against ``controlnet.config.conditioning_channels`` when it is loaded.

Encodings (:data:`ENCODINGS`):

- ``label_ids_1ch``: one channel, ``(labelId + 1) / 34`` in float32, as in GenVal's
  ControlNet training data (github.com/valeoai/GenVal, ``ControlNet/dataset.py``).
- ``cityscapes_palette``: RGB, the official Cityscapes colour of each label id
  (cityscapesScripts ``labels.py``), as in ``gtFine_color`` images.
- ``ade20k_palette``: RGB, each Cityscapes class drawn in the ADE20K colour of its closest
  ADE20K class, for the public segmentation ControlNets trained on ADE20K maps
  (lllyasviel/sd-controlnet-seg, lllyasviel/control_v11p_sd15_seg). Colours are the
  ADE20K palette of mmsegmentation's ``ADE20KDataset`` (as shipped in ControlNet's
  ``annotator/uniformer``); pixels outside every ADE20K class are black, as the
  ControlNet seg palette draws background. The mapping (Cityscapes -> ADE20K):

  ==================================================  ==============
  Cityscapes class                                    ADE20K class
  ==================================================  ==============
  road, parking, rail track                           road
  sidewalk                                            sidewalk
  building                                            building
  wall, tunnel                                        wall
  fence                                               fence
  guard rail                                          railing
  bridge                                              bridge
  pole, polegroup                                     pole
  traffic light                                       traffic light
  traffic sign                                        signboard
  vegetation                                          tree
  terrain                                             grass
  ground                                              earth
  sky                                                 sky
  person, rider                                       person
  car, license plate, ego vehicle                     car
  truck, trailer                                      truck
  bus, train                                          bus
  caravan                                             van
  motorcycle                                          minibike
  bicycle                                             bicycle
  unlabeled, rectification border, out of roi,        (background, black)
  static, dynamic
  ==================================================  ==============

- ``onehot_label_ids``: 34 channels, one per label id.

Label maps in train ids (0..18, void 255) are converted with :func:`train_ids_to_label_ids`
(void becomes "unlabeled", 0); any other value (e.g. OOD 254) is refused with a clear error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.labels import CITYSCAPES_CLASSES, VOID_ID

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "CITYSCAPES_TO_ADE20K",
    "ENCODINGS",
    "ENCODING_FILE",
    "EncodingError",
    "IdKind",
    "LabelEncoding",
    "TRAIN_TO_LABEL_ID",
    "get_encoding",
    "read_encoding_file",
    "resolve_encoding",
    "train_ids_to_label_ids",
    "write_encoding_file",
]

log = logging.getLogger(__name__)

IdKind = Literal["train_ids", "label_ids"]
ENCODING_FILE = "synthrel_encoding.json"
"""The file beside a trained ControlNet's weights naming its conditioning encoding."""

NUM_LABEL_IDS = 34


class EncodingError(ValueError):
    """A label map, ControlNet or encoding file that does not fit the conditioning encoding."""


# ----------------------------------------------------------------------------- label ids


def _train_to_label_lut() -> np.ndarray:
    # 0 ("unlabeled") for void; values without a Cityscapes meaning (e.g. OOD 254) stay
    # 255 so that train_ids_to_label_ids can refuse them.
    lut = np.full(256, 255, dtype=np.uint8)
    lut[VOID_ID] = 0
    for c in CITYSCAPES_CLASSES:
        if c.label_id >= 0 and c.train_id != VOID_ID:
            lut[c.train_id] = c.label_id
    return lut


TRAIN_TO_LABEL_ID: np.ndarray = _train_to_label_lut()
"""Lookup table (256,): train id 0..18 -> its Cityscapes label id, void 255 -> 0 ("unlabeled"); others -> 255."""


def train_ids_to_label_ids(label: np.ndarray, what: str = "label map") -> np.ndarray:
    """Map train ids (0..18, void 255) to Cityscapes label ids; ``EncodingError`` naming ``what`` for other values."""
    label = np.asarray(label)
    if label.dtype != np.uint8:
        if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
            raise EncodingError(
                f"{what}: train ids must lie in 0..255, got values in {int(label.min())}..{int(label.max())}"
            )
        label = label.astype(np.uint8)
    out = TRAIN_TO_LABEL_ID[label]
    bad = (out == 255) & (label != VOID_ID)
    if bad.any():
        stray = sorted(int(v) for v in np.unique(label[bad]))
        raise EncodingError(
            f"{what} holds values {stray} that are not Cityscapes train ids (0..18, void 255); "
            "a conditioning label map can only hold Cityscapes classes (map OOD pixels to a class or to void first)"
        )
    return out


# ----------------------------------------------------------------------------- ADE20K

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
"""The 150 ADE20K (SceneParsing) class names in index order."""

ADE20K_PALETTE: np.ndarray = np.array(
    [
        [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80], [140, 140, 140],
        [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7], [150, 5, 61], [120, 120, 70],
        [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4], [255, 51, 7], [204, 70, 3], [0, 102, 200],
        [61, 230, 250], [255, 6, 51], [11, 102, 255], [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220],
        [255, 9, 92], [112, 9, 255], [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10],
        [7, 255, 255], [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
        [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255], [140, 140, 140],
        [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0], [153, 255, 0], [0, 0, 255],
        [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255], [11, 200, 200], [255, 82, 0], [0, 255, 245],
        [0, 61, 255], [0, 255, 112], [0, 255, 133], [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0],
        [0, 143, 255], [51, 255, 0], [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0],
        [0, 255, 153], [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
        [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194], [0, 255, 82],
        [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255], [0, 255, 163], [255, 153, 0],
        [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255], [163, 255, 0], [255, 235, 0], [8, 184, 170],
        [133, 0, 255], [0, 255, 92], [184, 0, 255], [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112],
        [92, 255, 0], [0, 224, 255], [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0],
        [255, 0, 163], [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
        [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255], [255, 255, 0],
        [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0], [173, 0, 255], [0, 245, 255],
        [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255], [184, 255, 0], [0, 133, 255], [255, 214, 0],
        [25, 194, 194], [102, 255, 0], [92, 0, 255],
    ],
    dtype=np.uint8,
)  # fmt: skip
"""(150, 3) RGB colour of each ADE20K class, indexed like :data:`ADE20K_CLASSES`."""

CITYSCAPES_TO_ADE20K: dict[str, str | None] = {
    "unlabeled": None, "ego vehicle": "car", "rectification border": None, "out of roi": None, "static": None,
    "dynamic": None, "ground": "earth", "road": "road", "sidewalk": "sidewalk", "parking": "road",
    "rail track": "road", "building": "building", "wall": "wall", "fence": "fence", "guard rail": "railing",
    "bridge": "bridge", "tunnel": "wall", "pole": "pole", "polegroup": "pole", "traffic light": "traffic light",
    "traffic sign": "signboard", "vegetation": "tree", "terrain": "grass", "sky": "sky", "person": "person",
    "rider": "person", "car": "car", "truck": "truck", "bus": "bus", "caravan": "van", "trailer": "truck",
    "train": "bus", "motorcycle": "minibike", "bicycle": "bicycle",
}  # fmt: skip
"""Closest ADE20K class of each Cityscapes class (None: background, drawn black)."""


# ----------------------------------------------------------------------------- encodings


@dataclass(frozen=True)
class LabelEncoding:
    """A named conditioning encoding: label id -> ``channels`` floats in [0, 1] through a (256, C) lookup table."""

    name: str
    channels: int
    description: str
    lut: np.ndarray = field(repr=False)
    """(256, channels) float32; rows of values that are not label ids hold NaN."""

    def encode(self, label: np.ndarray, ids: IdKind = "label_ids", what: str = "label map") -> np.ndarray:
        """The (C, H, W) float32 conditioning of an (H, W) map of label ids (or train ids with ``ids="train_ids"``)."""
        label = np.asarray(label)
        if label.ndim != 2:
            raise EncodingError(f"{what}: expected an (H, W) map of Cityscapes {ids}, got shape {label.shape}")
        if ids == "train_ids":
            label = train_ids_to_label_ids(label, what=what)
        elif ids != "label_ids":
            raise EncodingError(f"ids must be 'label_ids' or 'train_ids', got {ids!r}")
        if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
            raise EncodingError(f"{what}: label ids must lie in 0..33, got values in {label.min()}..{label.max()}")
        label = label.astype(np.uint8, copy=False)
        valid = ~np.isnan(self.lut[:, 0])
        if not valid[label].all():
            stray = sorted(int(v) for v in np.unique(label[~valid[label]]))
            raise EncodingError(
                f"{what} holds values {stray} that encoding {self.name!r} cannot express "
                f"(expected Cityscapes label ids 0..33; pass ids='train_ids' for train-id maps)"
            )
        return np.ascontiguousarray(np.moveaxis(self.lut[label], -1, 0))

    def encode_tensor(self, label: np.ndarray, ids: IdKind = "label_ids", what: str = "label map") -> torch.Tensor:
        """:meth:`encode` as a float32 tensor."""
        return torch.from_numpy(self.encode(label, ids=ids, what=what))

    def to_json(self) -> dict[str, object]:
        """What ``synthrel_encoding.json`` records."""
        return {"encoding": self.name, "conditioning_channels": self.channels, "ids": "label_ids"}


def _lut(rows: Mapping[int, Sequence[float]], channels: int) -> np.ndarray:
    lut = np.full((256, channels), np.nan, dtype=np.float32)
    for i, v in rows.items():
        lut[i] = np.asarray(v, dtype=np.float32)
    return lut


def _label_ids_1ch() -> LabelEncoding:
    # GenVal: source.astype(np.float32) then (source + 1) / 34, both float32.
    ids = np.arange(NUM_LABEL_IDS, dtype=np.float32)
    values = (ids + np.float32(1)) / np.float32(34)
    return LabelEncoding(
        "label_ids_1ch",
        1,
        "(labelId + 1) / 34, one channel (GenVal)",
        _lut({i: [values[i]] for i in range(NUM_LABEL_IDS)}, 1),
    )


def _cityscapes_palette() -> LabelEncoding:
    rows = {c.label_id: [v / 255.0 for v in c.color] for c in CITYSCAPES_CLASSES if c.label_id >= 0}
    return LabelEncoding("cityscapes_palette", 3, "official Cityscapes colour of each label id, RGB", _lut(rows, 3))


def _ade20k_palette() -> LabelEncoding:
    rows: dict[int, list[float]] = {}
    for c in CITYSCAPES_CLASSES:
        if c.label_id < 0:
            continue
        ade = CITYSCAPES_TO_ADE20K[c.name]
        colour = (0, 0, 0) if ade is None else tuple(int(v) for v in ADE20K_PALETTE[ADE20K_CLASSES.index(ade)])
        rows[c.label_id] = [v / 255.0 for v in colour]
    return LabelEncoding(
        "ade20k_palette", 3, "each Cityscapes class in the ADE20K colour of its closest ADE20K class", _lut(rows, 3)
    )


def _onehot() -> LabelEncoding:
    eye = np.eye(NUM_LABEL_IDS, dtype=np.float32)
    return LabelEncoding(
        "onehot_label_ids", NUM_LABEL_IDS, "one channel per label id", _lut(dict(enumerate(eye)), NUM_LABEL_IDS)
    )


ENCODINGS: dict[str, LabelEncoding] = {
    e.name: e for e in (_label_ids_1ch(), _cityscapes_palette(), _ade20k_palette(), _onehot())
}
"""The conditioning encodings by name."""


def get_encoding(encoding: str | LabelEncoding) -> LabelEncoding:
    """The encoding named ``encoding`` (an instance passes through); ``EncodingError`` listing the names otherwise."""
    if isinstance(encoding, LabelEncoding):
        return encoding
    try:
        return ENCODINGS[str(encoding)]
    except KeyError:
        raise EncodingError(
            f"unknown conditioning encoding {encoding!r}; expected one of {sorted(ENCODINGS)}"
        ) from None


# ----------------------------------------------------------------------------- the file beside a ControlNet


def write_encoding_file(folder: str | os.PathLike[str], encoding: str | LabelEncoding) -> Path:
    """Write ``<folder>/synthrel_encoding.json`` naming ``encoding`` (atomically)."""
    return atomic_write_json(Path(folder) / ENCODING_FILE, get_encoding(encoding).to_json())


def read_encoding_file(folder: str | os.PathLike[str]) -> LabelEncoding | None:
    """The encoding recorded in ``<folder>/synthrel_encoding.json``; None when the file is absent."""
    path = Path(folder) / ENCODING_FILE
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        name = payload["encoding"]
    except (ValueError, KeyError, TypeError) as e:
        raise EncodingError(f"{path} is not a valid encoding file (expected JSON with an 'encoding' name): {e}") from e
    return get_encoding(name)


def resolve_encoding(
    controlnet_source: str | os.PathLike[str] | None,
    conditioning_channels: int,
    encoding: str | LabelEncoding | None = None,
) -> LabelEncoding:
    """The encoding to feed a ControlNet with ``conditioning_channels`` inputs, loaded from ``controlnet_source``.

    The folder's ``synthrel_encoding.json`` decides; an explicit ``encoding`` must agree with it.
    Without the file (a hub ControlNet, an imported checkpoint) ``encoding`` is required (a warning
    says it cannot be verified). The encoding's channel count must equal ``conditioning_channels``.
    """
    source = None if controlnet_source is None else str(controlnet_source)
    stored = read_encoding_file(source) if source is not None and Path(source).is_dir() else None
    explicit = None if encoding is None else get_encoding(encoding)
    where = f"ControlNet {source!r}" if source is not None else "the ControlNet"
    if stored is not None and explicit is not None and stored.name != explicit.name:
        raise EncodingError(
            f"{where} was trained with encoding {stored.name!r} ({Path(source) / ENCODING_FILE}), "  # type: ignore[arg-type]
            f"but encoding {explicit.name!r} was requested; drop the explicit encoding or use {stored.name!r}"
        )
    chosen = stored or explicit
    if chosen is None:
        raise EncodingError(
            f"{where} has no {ENCODING_FILE}, so its conditioning encoding is unknown; pass encoding=<name> "
            f"(one of {sorted(ENCODINGS)}; ade20k_palette for the public lllyasviel seg ControlNets, "
            "label_ids_1ch for GenVal's Cityscapes ControlNet)"
        )
    if stored is None and source is not None:
        log.warning("%s has no %s: using encoding %r as given (not verifiable)", where, ENCODING_FILE, chosen.name)
    if int(conditioning_channels) != chosen.channels:
        raise EncodingError(
            f"encoding {chosen.name!r} has {chosen.channels} channel(s) but {where} expects "
            f"conditioning_channels={int(conditioning_channels)}; choose an encoding with "
            f"{int(conditioning_channels)} channel(s) or another ControlNet"
        )
    return chosen
