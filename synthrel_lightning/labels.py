"""Label conventions shared by every part of synthrel-lightning (defined once, here).

Semantic targets use the 19 Cityscapes train ids (0..18), :data:`OOD_ID` (254) for
pixels of an out-of-distribution object and :data:`VOID_ID` (255) for pixels that
are ignored. Binary OOD targets use 0 (in-distribution), 1 (OOD) and 255 (void).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VOID_ID: int = 255
"""Ignored pixels, in semantic and in binary OOD targets."""
OOD_ID: int = 254
"""Out-of-distribution pixels in semantic targets (the peers' convention)."""
OOD_POSITIVE: int = 1
"""OOD pixels in binary OOD targets."""
OOD_NEGATIVE: int = 0
"""In-distribution pixels in binary OOD targets."""


@dataclass(frozen=True)
class CityscapesClass:
    """One row of the official Cityscapes label table."""

    name: str
    label_id: int
    train_id: int
    color: tuple[int, int, int]


# The official table (cityscapesScripts labels.py); train_id 255 = ignored.
CITYSCAPES_CLASSES: tuple[CityscapesClass, ...] = (
    CityscapesClass("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesClass("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesClass("rectification border", 2, 255, (0, 0, 0)),
    CityscapesClass("out of roi", 3, 255, (0, 0, 0)),
    CityscapesClass("static", 4, 255, (0, 0, 0)),
    CityscapesClass("dynamic", 5, 255, (111, 74, 0)),
    CityscapesClass("ground", 6, 255, (81, 0, 81)),
    CityscapesClass("road", 7, 0, (128, 64, 128)),
    CityscapesClass("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesClass("parking", 9, 255, (250, 170, 160)),
    CityscapesClass("rail track", 10, 255, (230, 150, 140)),
    CityscapesClass("building", 11, 2, (70, 70, 70)),
    CityscapesClass("wall", 12, 3, (102, 102, 156)),
    CityscapesClass("fence", 13, 4, (190, 153, 153)),
    CityscapesClass("guard rail", 14, 255, (180, 165, 180)),
    CityscapesClass("bridge", 15, 255, (150, 100, 100)),
    CityscapesClass("tunnel", 16, 255, (150, 120, 90)),
    CityscapesClass("pole", 17, 5, (153, 153, 153)),
    CityscapesClass("polegroup", 18, 255, (153, 153, 153)),
    CityscapesClass("traffic light", 19, 6, (250, 170, 30)),
    CityscapesClass("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesClass("vegetation", 21, 8, (107, 142, 35)),
    CityscapesClass("terrain", 22, 9, (152, 251, 152)),
    CityscapesClass("sky", 23, 10, (70, 130, 180)),
    CityscapesClass("person", 24, 11, (220, 20, 60)),
    CityscapesClass("rider", 25, 12, (255, 0, 0)),
    CityscapesClass("car", 26, 13, (0, 0, 142)),
    CityscapesClass("truck", 27, 14, (0, 0, 70)),
    CityscapesClass("bus", 28, 15, (0, 60, 100)),
    CityscapesClass("caravan", 29, 255, (0, 0, 90)),
    CityscapesClass("trailer", 30, 255, (0, 0, 110)),
    CityscapesClass("train", 31, 16, (0, 80, 100)),
    CityscapesClass("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesClass("bicycle", 33, 18, (119, 11, 32)),
    CityscapesClass("license plate", -1, 255, (0, 0, 142)),
)

NUM_CLASSES: int = 19
"""Number of Cityscapes train ids."""

TRAIN_ID_NAMES: tuple[str, ...] = tuple(
    c.name for c in sorted((c for c in CITYSCAPES_CLASSES if c.train_id != VOID_ID), key=lambda c: c.train_id)
)
"""Class names indexed by train id."""

TRAIN_ID_COLORS: np.ndarray = np.array(
    [c.color for c in sorted((c for c in CITYSCAPES_CLASSES if c.train_id != VOID_ID), key=lambda c: c.train_id)],
    dtype=np.uint8,
)
"""(19, 3) RGB palette indexed by train id."""

LABEL_IDS: frozenset[int] = frozenset(c.label_id for c in CITYSCAPES_CLASSES if c.label_id >= 0)
"""Valid Cityscapes label ids (0..33)."""


def _label_to_train_lut() -> np.ndarray:
    lut = np.full(256, VOID_ID, dtype=np.uint8)
    for c in CITYSCAPES_CLASSES:
        if c.label_id >= 0:
            lut[c.label_id] = c.train_id
    return lut


LABEL_TO_TRAIN_ID: np.ndarray = _label_to_train_lut()
"""Lookup table (256,) mapping a Cityscapes label id to its train id (255 = void)."""

TRAIN_NAME_TO_ID: dict[str, int] = {name: i for i, name in enumerate(TRAIN_ID_NAMES)}
"""Train id by class name (e.g. ``"road" -> 0``)."""


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map an array of Cityscapes label ids (0..33) to train ids (0..18, void 255)."""
    return LABEL_TO_TRAIN_ID[label_ids]


def semantic_to_ood_target(label: np.ndarray) -> np.ndarray:
    """Binary OOD target (0 in, 1 OOD, 255 void) from a semantic target with 254 = OOD."""
    out = np.zeros_like(label, dtype=np.uint8)
    out[label == VOID_ID] = VOID_ID
    out[label == OOD_ID] = OOD_POSITIVE
    return out


def colorize_train_ids(label: np.ndarray) -> np.ndarray:
    """RGB rendering (H, W, 3) of a train-id map; OOD white, void black."""
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    valid = label < NUM_CLASSES
    out[valid] = TRAIN_ID_COLORS[label[valid]]
    out[label == OOD_ID] = 255
    return out
