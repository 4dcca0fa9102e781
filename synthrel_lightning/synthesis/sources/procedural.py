"""Procedural outliers that need no data and no GPU: textured random shapes with feathered edges."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthrel_lightning.labels import OOD_ID
from synthrel_lightning.synthesis.bank import OutlierEntry
from synthrel_lightning.synthesis.sources.base import OutlierSource, feathered_alpha

__all__ = ["ProceduralObjectSource"]


class ProceduralObjectSource(OutlierSource):
    """Random coloured shapes with textures and feathered alpha (ellipses, polygons, stripes, noise)."""

    SHAPES: tuple[str, ...] = ("ellipse", "polygon", "star", "blob")
    TEXTURES: tuple[str, ...] = ("flat", "stripes", "checker", "noise", "gradient")

    def __init__(
        self,
        size_range: tuple[int, int] = (48, 192),
        shapes: Sequence[str] = SHAPES,
        textures: Sequence[str] = TEXTURES,
        feather: float = 1.5,
        label_value: int = OOD_ID,
        in_distribution_ids: Sequence[int] = (),
        in_distribution_fraction: float = 0.0,
    ) -> None:
        unknown = set(shapes) - set(self.SHAPES)
        if unknown:
            raise ValueError(f"unknown shapes {sorted(unknown)}; expected some of {self.SHAPES}")
        unknown = set(textures) - set(self.TEXTURES)
        if unknown:
            raise ValueError(f"unknown textures {sorted(unknown)}; expected some of {self.TEXTURES}")
        if not 4 <= size_range[0] <= size_range[1]:
            raise ValueError(f"size_range must satisfy 4 <= lo <= hi, got {size_range!r}")
        if in_distribution_fraction > 0 and not in_distribution_ids:
            raise ValueError(
                "in_distribution_fraction > 0 needs in_distribution_ids (train ids to label controls with)"
            )
        self.size_range = (int(size_range[0]), int(size_range[1]))
        self.shapes = tuple(shapes)
        self.textures = tuple(textures)
        self.feather = float(feather)
        self.label_value = int(label_value)
        self.in_distribution_ids = tuple(int(i) for i in in_distribution_ids)
        self.in_distribution_fraction = float(in_distribution_fraction)

    def _texture(self, kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        c1 = rng.integers(0, 256, 3).astype(np.float32)
        c2 = rng.integers(0, 256, 3).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if kind == "flat":
            t = np.zeros((h, w), np.float32)
        elif kind == "stripes":
            period = rng.uniform(6, 24)
            angle = rng.uniform(0, np.pi)
            t = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0).astype(np.float32)
        elif kind == "checker":
            cell = int(rng.integers(4, 16))
            t = (((yy // cell) + (xx // cell)) % 2).astype(np.float32)
        elif kind == "noise":
            # Low-resolution noise upsampled: blotchy, not per-pixel salt.
            from PIL import Image

            gh, gw = max(2, h // 8), max(2, w // 8)
            coarse = (rng.random((gh, gw)) * 255).astype(np.uint8)
            t = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0
        else:  # gradient
            angle = rng.uniform(0, 2 * np.pi)
            proj = xx * np.cos(angle) + yy * np.sin(angle)
            t = (proj - proj.min()) / max(1e-6, float(proj.max() - proj.min()))
        rgb = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
        return np.clip(rgb, 0, 255).astype(np.uint8)

    def _mask(self, kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        from PIL import Image, ImageDraw

        img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(img)
        # A margin so the feathered edge is not cut by the crop (smaller for tiny objects).
        m = min(int(np.ceil(3 * self.feather)) + 1, max(0, (min(h, w) - 2) // 4))
        cx, cy = w / 2, h / 2
        if kind == "ellipse":
            draw.ellipse([m, m, w - 1 - m, h - 1 - m], fill=255)
        elif kind in ("polygon", "star", "blob"):
            n = int(rng.integers(5, 11)) if kind != "star" else 2 * int(rng.integers(4, 8))
            angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
            if kind == "polygon":
                # Jittered, not free, angles: free ones can cluster into a sliver with no interior.
                angles = angles + rng.uniform(-0.4, 0.4, n) * (2 * np.pi / n)
            if kind == "star":
                radii = np.where(np.arange(n) % 2 == 0, 1.0, rng.uniform(0.35, 0.6))
            elif kind == "blob":
                radii = 0.75 + 0.25 * rng.uniform(-1, 1, n)
            else:
                radii = rng.uniform(0.6, 1.0, n)
            rx, ry = cx - m, cy - m
            pts = [(float(cx + rx * r * np.cos(a)), float(cy + ry * r * np.sin(a))) for a, r in zip(angles, radii)]
            draw.polygon(pts, fill=255)
        mask = np.asarray(img, dtype=np.uint8)
        if not mask.any():  # degenerate polygon: fall back to an ellipse
            draw.ellipse([m, m, w - 1 - m, h - 1 - m], fill=255)
            mask = np.asarray(img, dtype=np.uint8)
        return mask

    def sample(self, rng: np.random.Generator) -> OutlierEntry:
        """One random textured shape."""
        lo, hi = self.size_range
        h = int(rng.integers(lo, hi + 1))
        w = int(np.clip(round(h * rng.uniform(0.6, 1.6)), 4, 2 * hi))
        shape = self.shapes[int(rng.integers(len(self.shapes)))]
        texture = self.textures[int(rng.integers(len(self.textures)))]
        rgb = self._texture(texture, h, w, rng)
        alpha = feathered_alpha(self._mask(shape, h, w, rng), self.feather)
        label_value = self.label_value
        if self.in_distribution_fraction > 0 and rng.random() < self.in_distribution_fraction:
            label_value = self.in_distribution_ids[int(rng.integers(len(self.in_distribution_ids)))]
        return OutlierEntry(
            rgb=rgb,
            alpha=alpha,
            label_value=label_value,
            name=f"{texture} {shape}",
            source="procedural",
            model="procedural",
            metadata={"shape": shape, "texture": texture},
        )
