"""Procedurally generated street scenes written in the official Cityscapes layout.

The embedded demo trains on these: each frame has a road in perspective,
sidewalks, buildings, vegetation, terrain, sky, poles, traffic signs and cars,
drawn with textured colours, and its ``gtFine_labelIds`` map uses the official
Cityscapes label ids, so the same loaders serve the demo and real Cityscapes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from synthrel_lightning.atomic import atomic_save_png, atomic_write_json
from synthrel_lightning.data.io import DatasetError
from synthrel_lightning.seeding import numpy_generator

log = logging.getLogger(__name__)

# Cityscapes label ids used by the scenes.
_ROAD, _SIDEWALK, _BUILDING, _FENCE, _POLE, _SIGN, _VEGETATION, _TERRAIN, _SKY, _PERSON, _CAR = (
    7,
    8,
    11,
    13,
    17,
    20,
    21,
    22,
    23,
    24,
    26,
)
_BASE_COLORS = {
    _ROAD: (90, 85, 95),
    _SIDEWALK: (170, 150, 160),
    _BUILDING: (120, 110, 100),
    _FENCE: (150, 130, 110),
    _POLE: (60, 60, 60),
    _SIGN: (230, 200, 30),
    _VEGETATION: (60, 120, 40),
    _TERRAIN: (140, 170, 90),
    _SKY: (130, 170, 220),
    _PERSON: (180, 60, 70),
    _CAR: (30, 40, 150),
}
_CITIES = {"train": ("demotown", "synthville"), "val": ("valburg",), "test": ("testdorf",)}
MARKER = ".synthrel-demo.json"
"""The file that marks a folder as written by the demo (and records how)."""


def _draw_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (RGB uint8 (H,W,3), label ids uint8 (H,W))."""
    labels = Image.new("L", (width, height), _SKY)
    draw = ImageDraw.Draw(labels)
    horizon = int(height * rng.uniform(0.38, 0.5))
    # Buildings along the horizon, with varying heights, on both sides.
    x = 0
    while x < width:
        w = int(rng.uniform(0.06, 0.18) * width)
        top = int(horizon - rng.uniform(0.12, 0.35) * height)
        kind = _BUILDING if rng.random() < 0.75 else _VEGETATION
        draw.rectangle([x, top, x + w, horizon + 2], fill=kind)
        x += w
    draw.rectangle([0, horizon, width, height], fill=_TERRAIN)
    # Road as a trapezoid to a vanishing point; sidewalks either side.
    vp = width * rng.uniform(0.4, 0.6)
    half_bottom = width * rng.uniform(0.3, 0.45)
    walk = width * rng.uniform(0.08, 0.16)
    draw.polygon(
        [(vp - 4, horizon), (vp + 4, horizon), (vp + half_bottom + walk, height), (vp - half_bottom - walk, height)],
        fill=_SIDEWALK,
    )
    draw.polygon(
        [(vp - 2, horizon), (vp + 2, horizon), (vp + half_bottom, height), (vp - half_bottom, height)], fill=_ROAD
    )
    # Trees / hedges beside the sidewalks.
    for _ in range(int(rng.integers(1, 4))):
        cx = rng.choice([rng.uniform(0, vp - half_bottom * 0.6), rng.uniform(vp + half_bottom * 0.6, width)])
        cy = horizon + rng.uniform(-0.1, 0.05) * height
        r = rng.uniform(0.05, 0.12) * height
        draw.ellipse([cx - r, cy - 2 * r, cx + r, cy], fill=_VEGETATION)
    # Poles with signs.
    for _ in range(int(rng.integers(1, 3))):
        side = rng.choice([-1.0, 1.0])
        t = rng.uniform(0.2, 0.9)
        y = horizon + t * (height - horizon)
        px = vp + side * (half_bottom * t + walk * t * 0.6)
        ph = 0.5 * height * t + 6
        pw = max(1.0, 0.012 * width * t)
        draw.rectangle([px - pw, y - ph, px + pw, y], fill=_POLE)
        s = max(2.0, 0.03 * width * t)
        draw.rectangle([px - s, y - ph, px + s, y - ph + 1.4 * s], fill=_SIGN)
    # Cars on the road, further = smaller and higher; a pedestrian sometimes.
    for _ in range(int(rng.integers(0, 4))):
        t = rng.uniform(0.15, 0.9)
        y = horizon + t * (height - horizon)
        cx = vp + rng.uniform(-0.8, 0.8) * half_bottom * t
        cw, ch = 0.22 * width * t + 3, 0.12 * height * t + 2
        draw.rounded_rectangle([cx - cw / 2, y - ch, cx + cw / 2, y], radius=max(1, int(ch / 4)), fill=_CAR)
    if rng.random() < 0.5:
        t = rng.uniform(0.3, 0.8)
        y = horizon + t * (height - horizon)
        px = vp + rng.choice([-1.0, 1.0]) * (half_bottom * t + walk * t * 0.5)
        draw.rectangle([px - 0.01 * width * t - 1, y - 0.25 * height * t, px + 0.01 * width * t + 1, y], fill=_PERSON)
    label = np.asarray(labels, dtype=np.uint8)
    # Texture: a per-class base colour, a per-frame tint, smooth noise and pixel noise.
    palette = np.zeros((256, 3), dtype=np.float32)
    for lid, color in _BASE_COLORS.items():
        palette[lid] = np.clip(np.array(color) + rng.normal(0, 12, 3), 0, 255)
    image: np.ndarray = palette[label]
    coarse = rng.normal(0, 10, (height // 8 + 1, width // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:height, :width]
    image = image + coarse + rng.normal(0, 6, image.shape)
    image = image * np.linspace(1.05, 0.9, height, dtype=np.float32)[:, None, None] * rng.uniform(0.8, 1.2)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _only_demo_files(root: Path) -> bool:
    """Whether every file under ``root`` is a scene file the demo writes (a folder from before the marker)."""
    cities = {c for names in _CITIES.values() for c in names}
    for path in root.rglob("*"):
        if path.is_dir():
            continue
        parts = path.relative_to(root).parts
        if len(parts) != 4 or parts[0] not in ("leftImg8bit", "gtFine") or parts[2] not in cities:
            return False
        if not parts[3].startswith(parts[2] + "_") or not parts[3].endswith(".png"):
            return False
    return True


def _claim(root: Path, settings: dict[str, object]) -> None:
    """Make sure ``root`` is the demo's own folder for these settings, marking it if new or empty."""
    marker = root / MARKER
    if root.exists() and not root.is_dir():
        raise DatasetError(f"demo scenes: {root} is a file; pass a folder for the demo to write its scenes into")
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"demo scenes: cannot read the demo marker {marker}: {exc}") from exc
        mine = {k: recorded.get(k) for k in settings}
        if mine != settings:
            raise DatasetError(
                f"demo scenes: {root} holds scenes written with {mine}, not {settings}; "
                "pass another folder (or delete this one) to write scenes with the new settings"
            )
        return
    if root.is_dir() and any(root.iterdir()) and not _only_demo_files(root):
        raise DatasetError(
            f"demo scenes: {root} already holds files the demo did not write; the demo writes its procedural "
            "scenes only into a new or empty folder it owns. To train on a real dataset use "
            "synthrel_lightning.data.CityscapesOODDataModule (its root is only read); for the demo pass another root"
        )
    atomic_write_json(marker, {"written_by": "synthrel_lightning demo scenes", **settings})


def write_demo_cityscapes(
    root: str | os.PathLike[str],
    num_train: int = 64,
    num_val: int = 16,
    size: tuple[int, int] = (128, 256),
    seed: int = 0,
) -> Path:
    """Write (or complete) a procedural dataset in the Cityscapes layout under ``root``; returns it.

    ``root`` must be a folder the demo owns: new, empty, or marked by an earlier call
    (``.synthrel-demo.json``, which records ``size`` and ``seed``). A folder holding anything
    else raises :class:`~synthrel_lightning.data.io.DatasetError` before a single file is
    written, so a real dataset is never modified. Frames already on disk are kept, so an
    interrupted run resumes. ``size`` is (H, W).
    """
    root = Path(root)
    height, width = size
    if height < 32 or width < 32:
        raise ValueError(f"write_demo_cityscapes: size must be at least 32x32, got {size}")
    _claim(root, {"size": [int(height), int(width)], "seed": int(seed)})
    written = 0
    for split, count in (("train", num_train), ("val", num_val)):
        cities = _CITIES[split]
        for i in range(count):
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_000019"
            img_path = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            lbl_path = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            if img_path.exists() and lbl_path.exists():
                continue
            image, label = _draw_scene(numpy_generator(seed, split, i), width, height)
            atomic_save_png(lbl_path, label)  # label first: an image is never left without its label
            atomic_save_png(img_path, image)
            written += 1
    if written:
        log.info("demo scenes: wrote %d frames to %s", written, root)
    return root
