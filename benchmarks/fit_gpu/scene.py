"""The benchmark's data on disk: procedural frames in the Cityscapes layout and a procedural outlier bank."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np


def _write_frame(image_path: Path, label_path: Path, size: tuple[int, int], seed: int) -> None:
    """One street-like frame (sky, buildings, vegetation, cars, road, sidewalk, noise) and its label ids."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    horizon = int(h * rng.uniform(0.4, 0.55))
    label = np.full((h, w), 23, np.uint8)  # sky
    for lid, count in ((11, 8), (21, 4)):  # building, vegetation
        for _ in range(count):
            x0 = int(rng.integers(0, max(1, w - w // 10)))
            top = int(horizon * rng.uniform(0.2, 0.7))
            label[top:horizon, x0 : x0 + int(rng.integers(w // 14, w // 4))] = lid
    label[horizon:] = 7  # road
    label[horizon:, : w // 6] = 8  # sidewalk
    for _ in range(3):  # cars on the road
        cw = int(rng.integers(w // 20, w // 8))
        x0 = int(rng.integers(w // 6, w - cw))
        y1 = int(rng.integers(horizon + cw // 4, h - h // 16))
        label[max(horizon, y1 - cw // 2) : y1, x0 : x0 + cw] = 26
    label[h - max(1, h // 17) :] = 1  # ego vehicle (void)
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    image = np.concatenate([90 + 100 * yy, 110 + 60 * yy, 150 - 40 * yy], -1).repeat(w, 1)
    palette = {
        23: (70, 130, 180), 11: (70, 70, 70), 21: (107, 142, 35), 7: (128, 64, 128),
        8: (244, 35, 232), 26: (0, 0, 142), 1: (0, 0, 0),
    }  # fmt: skip
    for lid, colour in palette.items():
        mask = label == lid
        image[mask] = 0.5 * image[mask] + 0.5 * np.asarray(colour, np.float32)
    image += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(image_path, compress_level=1)
    Image.fromarray(label).save(label_path, compress_level=1)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_frames(
    root: Path, size: tuple[int, int], unique: int, counts: dict[str, int], seed: int = 0, processes: int | None = None
) -> dict[str, int]:
    """Write ``unique`` procedural frames of ``size`` (H, W) and hard-link them to ``counts[split]`` frames per split.

    Layout: ``leftImg8bit/<split>/synth/synth_<i>_000019_leftImg8bit.png`` and the matching
    ``gtFine/.../_gtFine_labelIds.png`` (official label ids). Returns the counts written.
    """
    if unique < 1 or min(counts.values(), default=0) < 1:
        raise ValueError(f"write_frames: need unique >= 1 and every split count >= 1, got {unique} and {counts}")
    src_dir = root / "_unique"
    src_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(src_dir / f"{i}_image.png", src_dir / f"{i}_label.png", tuple(size), seed + i) for i in range(unique)]
    processes = processes or min(unique, os.cpu_count() or 1)
    if processes > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.starmap(_write_frame, jobs)
    else:
        for job in jobs:
            _write_frame(*job)
    for split, n in counts.items():
        img_dir = root / "leftImg8bit" / split / "synth"
        lab_dir = root / "gtFine" / split / "synth"
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"synth_{i:06d}_000019"
            image, label = jobs[i % unique][:2]
            _link_or_copy(image, img_dir / f"{stem}_leftImg8bit.png")
            _link_or_copy(label, lab_dir / f"{stem}_gtFine_labelIds.png")
    return dict(counts)


def build_bank(root: Path, n: int, object_size: tuple[int, int], seed: int = 0) -> Path:
    """An outlier bank of ``n`` procedural objects (longest side in ``object_size`` pixels)."""
    from synthrel_lightning.synthesis import OutlierBank, ProceduralObjectSource, fill_bank

    bank = OutlierBank(root)
    report = fill_bank(ProceduralObjectSource(size_range=tuple(object_size)), bank, n, seed=seed)
    if getattr(report, "fatal", None):
        raise RuntimeError(f"build_bank: filling the procedural bank at {root} failed: {report.fatal}")
    return Path(bank.root)


__all__ = ["build_bank", "write_frames"]
