"""The demo study's world: procedural scenes and procedural stand-ins for the paper's synthetic and real sets.

Each builder writes one set in the layout of
:class:`~synthrel_lightning.data.synthetic.SyntheticFramesDataset` (``images/<key>.png``,
``labels/<key>_labelTrainIds.png`` with OOD 254, ``labels/<key>_ood.png`` when objects are
pasted) from the demo's procedural scenes, resumably (frames on disk are kept):

- :class:`DemoObjectsSet`: frames with procedural objects pasted and labelled OOD, the stand-in
  for inpainted-object sets (synthetic) and for Road Anomaly-like benchmarks (real);
- :class:`DemoDomainSet`: frames re-rendered in a procedural "fog" or "night", the stand-in
  for ControlNet domain sets (synthetic) and ACDC (real).

``failure_rate`` makes a seeded fraction of a synthetic set's frames fail the way generators
fail: an object labelled OOD but never drawn, or a frame drawn from another label map. The
QC stage is meant to find exactly those frames.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from synthrel_lightning.atomic import atomic_save_png
from synthrel_lightning.data.demo import write_demo_cityscapes
from synthrel_lightning.data.sample import Sample
from synthrel_lightning.labels import semantic_to_ood_target
from synthrel_lightning.seeding import numpy_generator

__all__ = ["DOMAINS", "DemoDomainSet", "DemoObjectsSet", "DemoScenes", "render_domain"]

log = logging.getLogger(__name__)

DOMAINS: tuple[str, ...] = ("fog", "night")
"""Procedural domains of the demo."""


class DemoScenes:
    """Write the demo's procedural scenes (Cityscapes layout) to ``root``; see ``write_demo_cityscapes``."""

    def __init__(
        self, root: str, num_train: int = 64, num_val: int = 16, size: tuple[int, int] = (128, 256), seed: int = 0
    ) -> None:
        self.root, self.num_train, self.num_val, self.size, self.seed = root, num_train, num_val, tuple(size), seed

    def __call__(self) -> Path:
        return write_demo_cityscapes(self.root, self.num_train, self.num_val, self.size, self.seed)  # type: ignore[arg-type]


def _val_frames(scenes: str, num_val: int, size: tuple[int, int], seed: int) -> list[Sample]:
    from synthrel_lightning.data.cityscapes import CityscapesDataset

    write_demo_cityscapes(scenes, 0, num_val, size, seed)
    ds = CityscapesDataset(scenes, split="val")
    return [ds.load_raw(i) for i in range(len(ds))]


def _write(root: Path, key: str, image: np.ndarray, label: np.ndarray, with_ood: bool) -> None:
    labels = root / "labels"
    if with_ood:
        atomic_save_png(labels / f"{key}_ood.png", semantic_to_ood_target(label).astype(np.uint8))
    atomic_save_png(labels / f"{key}_labelTrainIds.png", label.astype(np.uint8))
    atomic_save_png(root / "images" / f"{key}.png", image)  # image last: a frame is complete once it exists


def _failing(seed: int, kind: str, n: int, rate: float) -> set[int]:
    count = int(round(rate * n))
    return set(numpy_generator(seed, kind, "failures").permutation(n)[:count].tolist()) if count else set()


class DemoObjectsSet:
    """Demo val scenes with procedural objects pasted (labelled OOD 254).

    Args:
        root: the set's folder (written).
        scenes: the demo scenes folder to read (written first if missing).
        num_val / size / scene_seed: which scenes (as ``write_demo_cityscapes``).
        shapes / textures: of the pasted objects (see ``ProceduralObjectSource``).
        seed: seed of the pasting.
        failure_rate: fraction of frames whose object is labelled but not drawn.
    """

    def __init__(
        self,
        root: str,
        scenes: str,
        num_val: int = 16,
        size: tuple[int, int] = (128, 256),
        scene_seed: int = 0,
        shapes: list[str] | None = None,
        textures: list[str] | None = None,
        seed: int = 0,
        failure_rate: float = 0.0,
    ) -> None:
        self.root, self.scenes = Path(root), scenes
        self.num_val, self.size, self.scene_seed = num_val, tuple(size), scene_seed
        self.shapes = list(shapes or ["star", "blob"])
        self.textures = list(textures or ["checker", "gradient"])
        self.seed, self.failure_rate = seed, float(failure_rate)

    def __call__(self) -> Path:
        from synthrel_lightning.synthesis import OutlierMixer, ProceduralObjectSource

        mixer = OutlierMixer(
            ProceduralObjectSource(size_range=(12, 40), shapes=self.shapes, textures=self.textures),
            probability=1.0,
            num_objects=(1, 2),
            seed=self.seed,
        )
        frames = _val_frames(self.scenes, self.num_val, self.size, self.scene_seed)  # type: ignore[arg-type]
        failing = _failing(self.seed, "objects", len(frames), self.failure_rate)
        for i, frame in enumerate(frames):
            key = str(frame["name"])
            if (self.root / "images" / f"{key}.png").exists():
                continue
            mixed = mixer({"image": frame["image"], "label": frame["label"], "name": key}, i)
            image = np.asarray(mixed["image"]).copy()
            if i in failing:  # the generator "forgot" the object: its pixels keep the scene
                image = np.asarray(frame["image"]).copy()
            _write(self.root, key, image, np.asarray(mixed["label"]), with_ood=True)
        return self.root


def render_domain(image: np.ndarray, domain: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 H,W,3) seen in procedural ``fog`` (haze thickening to the horizon) or ``night``."""
    img = image.astype(np.float32)
    h, w = img.shape[:2]
    if domain == "fog":
        depth = np.linspace(1.0, 0.35, h, dtype=np.float32)[:, None, None]  # top rows are far away
        haze = np.clip(strength * depth * rng.uniform(0.9, 1.1), 0, 1)
        out = img * (1 - haze) + 200.0 * haze
    elif domain == "night":
        out = img * (1 - strength) * np.array([0.7, 0.8, 1.1], dtype=np.float32)
        out += rng.normal(0, 6 * strength, img.shape)
        for _ in range(int(rng.integers(1, 4))):  # street lights
            cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0, 1) * w
            yy, xx = np.mgrid[0:h, 0:w]
            out += 90.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.06 * w) ** 2))[..., None]
    else:
        raise ValueError(f"render_domain: domain must be one of {DOMAINS}, got {domain!r}")
    return np.clip(out, 0, 255).astype(np.uint8)


class DemoDomainSet:
    """Demo val scenes re-rendered in a procedural domain; the label map stays the ground truth.

    Args:
        root / scenes / num_val / size / scene_seed: as :class:`DemoObjectsSet`.
        domain: ``fog`` or ``night``.
        strength: how strong the effect is (0..1).
        seed: seed of the rendering.
        failure_rate: fraction of frames drawn from another frame's scene (labels then disagree).
    """

    def __init__(
        self,
        root: str,
        scenes: str,
        domain: str = "fog",
        strength: float = 0.5,
        num_val: int = 16,
        size: tuple[int, int] = (128, 256),
        scene_seed: int = 0,
        seed: int = 0,
        failure_rate: float = 0.0,
    ) -> None:
        if domain not in DOMAINS:
            raise ValueError(f"DemoDomainSet: domain must be one of {DOMAINS}, got {domain!r}")
        self.root, self.scenes, self.domain, self.strength = Path(root), scenes, domain, float(strength)
        self.num_val, self.size, self.scene_seed = num_val, tuple(size), scene_seed
        self.seed, self.failure_rate = seed, float(failure_rate)

    def __call__(self) -> Path:
        frames = _val_frames(self.scenes, self.num_val, self.size, self.scene_seed)  # type: ignore[arg-type]
        failing = _failing(self.seed, self.domain, len(frames), self.failure_rate)
        for i, frame in enumerate(frames):
            key = str(frame["name"])
            if (self.root / "images" / f"{key}.png").exists():
                continue
            source = frames[(i + len(frames) // 2) % len(frames)] if i in failing else frame
            rng = numpy_generator(self.seed, self.domain, key)
            image = render_domain(np.asarray(source["image"]), self.domain, self.strength, rng)
            _write(self.root, key, image, np.asarray(frame["label"]), with_ood=False)
        return self.root
