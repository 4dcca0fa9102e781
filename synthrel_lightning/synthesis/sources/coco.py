"""Objects cut out of any COCO-format instance-segmentation dataset (polygon or RLE masks)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from synthrel_lightning.labels import OOD_ID
from synthrel_lightning.synthesis.bank import OutlierEntry
from synthrel_lightning.synthesis.sources.base import OutlierSource, feathered_alpha

__all__ = ["CocoObjectSource", "decode_coco_rle", "polygons_to_mask"]

log = logging.getLogger(__name__)


def decode_coco_rle(counts: str | bytes | Sequence[int], height: int, width: int) -> np.ndarray:
    """Decode a COCO RLE (compressed string or list of run lengths) into a bool (H, W) mask."""
    if isinstance(counts, (str, bytes)):
        s = counts.encode("ascii") if isinstance(counts, str) else counts
        runs: list[int] = []
        p = 0
        while p < len(s):
            x = 0
            k = 0
            more = True
            while more:
                if p >= len(s):
                    raise ValueError(f"truncated COCO RLE string {counts!r}")
                c = s[p] - 48
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                p += 1
                k += 1
                if not more and (c & 0x10):
                    x |= -1 << (5 * k)
            if len(runs) > 2:
                x += runs[-2]
            runs.append(x)
    else:
        runs = [int(v) for v in counts]
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise ValueError(f"COCO RLE run lengths sum to {sum(runs)}, expected height*width = {height * width}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    # COCO masks are stored column-major.
    return flat.reshape((width, height)).T


def polygons_to_mask(polygons: Iterable[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` into a bool (H, W) mask."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        pts = [(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)]
        if len(pts) >= 3:
            draw.polygon(pts, fill=1, outline=1)
    return np.asarray(img, dtype=bool)


class UnreadableImageError(ValueError):
    """A COCO image file exists but cannot be decoded (the message names it)."""


class CocoObjectSource(OutlierSource):
    """Cuts objects out of any COCO-format instance-segmentation dataset (polygon or RLE masks).

    ``on_missing``: what an annotation whose image file is missing or unreadable does: ``"error"``
    (default) raises an error naming the file when it is drawn (FileNotFoundError, or ValueError for a
    file that cannot be decoded); ``"skip"`` leaves missing images' annotations out when the source is
    built, counting them in :attr:`missing_images` (logged with the first few names), and leaves an
    unreadable image's annotations out when it is first drawn, counting it in
    :attr:`unreadable_images` (one warning naming the file) and drawing again.
    """

    def __init__(
        self,
        annotation_json: str | os.PathLike,
        image_root: str | os.PathLike,
        categories: Sequence[str] | None = None,
        exclude_categories: Sequence[str] = (),
        min_area: float = 1000.0,
        include_crowd: bool = False,
        feather: float = 1.0,
        label_value: int = OOD_ID,
        padding: int = 2,
        on_missing: Literal["error", "skip"] = "error",
    ) -> None:
        if on_missing not in ("error", "skip"):
            raise ValueError(f"CocoObjectSource on_missing must be 'error' or 'skip', got {on_missing!r}")
        self.on_missing = on_missing
        self.missing_images: list[str] = []
        """Image files named by the annotation file but absent under ``image_root`` (``on_missing="skip"``)."""
        self.unreadable_images: list[str] = []
        """Image files present but not decodable, left out when drawn (``on_missing="skip"``)."""
        self.annotation_json = Path(annotation_json)
        self.image_root = Path(image_root)
        try:
            data = json.loads(self.annotation_json.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"COCO annotation file {self.annotation_json} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"COCO annotation file {self.annotation_json} is not valid JSON: {e}") from e
        for k in ("images", "annotations", "categories"):
            if k not in data:
                raise ValueError(f"{self.annotation_json} is not COCO instance format: missing {k!r}")
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        if categories is not None:
            unknown = set(categories) - set(cats.values())
            if unknown:
                raise ValueError(
                    f"categories {sorted(unknown)} not in {self.annotation_json} (has {sorted(cats.values())})"
                )
        keep_cats = {
            i for i, n in cats.items() if (categories is None or n in categories) and n not in set(exclude_categories)
        }
        self.images = {
            int(im["id"]): (str(im["file_name"]), int(im["height"]), int(im["width"])) for im in data["images"]
        }
        self.categories = cats
        self.feather = float(feather)
        self.label_value = int(label_value)
        self.padding = int(padding)
        self.annotations: list[dict[str, Any]] = []
        for a in data["annotations"]:
            if int(a["category_id"]) not in keep_cats or float(a.get("area", 0)) < min_area:
                continue
            if a.get("iscrowd", 0) and not include_crowd:
                continue
            if "segmentation" not in a or int(a["image_id"]) not in self.images:
                continue
            self.annotations.append(
                {k: a[k] for k in ("id", "image_id", "category_id", "segmentation", "bbox") if k in a}
            )
        if on_missing == "skip":
            self._drop_missing()
        if not self.annotations:
            missing = f" with its image present ({len(self.missing_images)} missing)" if self.missing_images else ""
            raise ValueError(f"no annotation in {self.annotation_json} matches the category/area filters{missing}")

    def _drop_missing(self) -> None:
        present: dict[int, bool] = {}
        kept = []
        for ann in self.annotations:
            image_id = int(ann["image_id"])
            if image_id not in present:
                file_name = self.images[image_id][0]
                present[image_id] = (self.image_root / file_name).is_file()
                if not present[image_id]:
                    self.missing_images.append(file_name)
            if present[image_id]:
                kept.append(ann)
        if self.missing_images:
            log.warning(
                "CocoObjectSource: %d image(s) named in %s are missing under %s (first: %s); "
                "their %d annotation(s) are skipped",
                len(self.missing_images),
                self.annotation_json,
                self.image_root,
                ", ".join(self.missing_images[:3]),
                len(self.annotations) - len(kept),
            )
        self.annotations = kept

    def __len__(self) -> int:
        return len(self.annotations)

    def mask(self, ann: dict[str, Any]) -> np.ndarray:
        """Full-image bool mask of one annotation."""
        _, h, w = self.images[int(ann["image_id"])]
        seg = ann["segmentation"]
        if isinstance(seg, list):
            return polygons_to_mask(seg, h, w)
        if isinstance(seg, dict) and "counts" in seg:
            sh, sw = (int(v) for v in seg.get("size", (h, w)))
            return decode_coco_rle(seg["counts"], sh, sw)
        raise ValueError(f"annotation {ann.get('id')} in {self.annotation_json} has an unknown segmentation format")

    def get(self, i: int) -> OutlierEntry:
        """The ``i``-th matching object as a tight crop with its feathered mask."""
        from PIL import Image

        ann = self.annotations[i]
        file_name, h, w = self.images[int(ann["image_id"])]
        path = self.image_root / file_name
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))  # decodes every pixel: damage fails here
        except FileNotFoundError:
            raise FileNotFoundError(
                f"COCO image {path} (annotation {ann.get('id')} in {self.annotation_json}) does not exist; "
                "set on_missing='skip' to leave out annotations whose image is missing"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # PIL's errors for undecodable files
            raise UnreadableImageError(
                f"COCO image {path} (annotation {ann.get('id')} in {self.annotation_json}) cannot be decoded "
                f"({type(exc).__name__}: {exc}); set on_missing='skip' to leave out annotations whose image "
                "is missing or unreadable"
            ) from exc
        mask = self.mask(ann)
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask of annotation {ann.get('id')} is {mask.shape}, image {path} is {rgb.shape[:2]}")
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            raise ValueError(f"annotation {ann.get('id')} in {self.annotation_json} has an empty mask")
        p = self.padding
        y0, y1 = max(0, ys.min() - p), min(rgb.shape[0], ys.max() + 1 + p)
        x0, x1 = max(0, xs.min() - p), min(rgb.shape[1], xs.max() + 1 + p)
        alpha = feathered_alpha(mask[y0:y1, x0:x1].astype(np.uint8) * 255, self.feather)
        name = self.categories[int(ann["category_id"])]
        return OutlierEntry(
            rgb=np.ascontiguousarray(rgb[y0:y1, x0:x1]),
            alpha=alpha,
            label_value=self.label_value,
            name=name,
            source=f"{file_name}#{ann.get('id')}",
            model="coco-paste",
            metadata={"annotation_id": ann.get("id"), "bbox_xyxy": [int(x0), int(y0), int(x1), int(y1)]},
        )

    def sample(self, rng: np.random.Generator) -> OutlierEntry:
        """A uniformly drawn matching object (with ``on_missing="skip"``, among those of readable images)."""
        while True:
            i = int(rng.integers(len(self.annotations)))
            try:
                return self.get(i)
            except (FileNotFoundError, UnreadableImageError):
                if self.on_missing != "skip":
                    raise
                self._drop_image(int(self.annotations[i]["image_id"]))

    def _drop_image(self, image_id: int) -> None:
        """Leave out every annotation of an image that vanished or cannot be decoded (warning once, naming it)."""
        file_name = self.images[image_id][0]
        before = len(self.annotations)
        self.annotations = [a for a in self.annotations if int(a["image_id"]) != image_id]
        self.unreadable_images.append(file_name)
        log.warning(
            "CocoObjectSource: image %s cannot be read; its %d annotation(s) are skipped (%d image(s) so far)",
            self.image_root / file_name,
            before - len(self.annotations),
            len(self.unreadable_images),
        )
        if not self.annotations:
            raise ValueError(
                f"no annotation in {self.annotation_json} has a readable image left under {self.image_root} "
                f"({len(self.unreadable_images)} unreadable, {len(self.missing_images)} missing)"
            )
