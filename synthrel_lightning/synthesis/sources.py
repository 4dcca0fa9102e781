"""Outlier sources that need no GPU: procedural shapes, COCO-format cut-outs, and a banked-outlier reader.

Every source has ``sample(rng) -> OutlierEntry | None`` (None when it has nothing to
serve), so the mixer, :func:`fill_bank` and the background refresh treat them alike.
"""

from __future__ import annotations

import abc
import importlib
import inspect
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthrel_lightning.labels import OOD_ID
from synthrel_lightning.seeding import numpy_generator
from synthrel_lightning.synthesis.bank import CorruptEntryError, OutlierBank, OutlierEntry

__all__ = [
    "OutlierSource",
    "ProceduralObjectSource",
    "CocoObjectSource",
    "BankSource",
    "InpaintingSource",
    "fill_bank",
    "ProducerSpec",
    "produce_into_bank",
    "decode_coco_rle",
    "polygons_to_mask",
]

log = logging.getLogger(__name__)


class OutlierSource(abc.ABC):
    """Base of everything that draws outliers from a NumPy generator.

    Subclass it (and implement :meth:`sample`) to plug a new source into
    :class:`~synthrel_lightning.synthesis.OutlierMixer` from Python or YAML.
    """

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> OutlierEntry | None:
        """One outlier (or None when the source is empty)."""


def _feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian-feathered uint8 alpha from a binary/uint8 mask."""
    from PIL import Image, ImageFilter

    if radius <= 0:
        return mask.astype(np.uint8)
    img = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.uint8)


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
            t = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), np.float32) / 255.0
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
        alpha = _feather(self._mask(shape, h, w, rng), self.feather)
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


# -- COCO-format instance masks ------------------------------------------------------------
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


class CocoObjectSource(OutlierSource):
    """Cuts objects out of any COCO-format instance-segmentation dataset (polygon or RLE masks)."""

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
    ) -> None:
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
            missing = set(categories) - set(cats.values())
            if missing:
                raise ValueError(
                    f"categories {sorted(missing)} not in {self.annotation_json} (has {sorted(cats.values())})"
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
        if not self.annotations:
            raise ValueError(f"no annotation in {self.annotation_json} matches the category/area filters")

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
                rgb = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise FileNotFoundError(f"COCO image {path} (annotation {ann.get('id')}) does not exist") from None
        mask = self.mask(ann)
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask of annotation {ann.get('id')} is {mask.shape}, image {path} is {rgb.shape[:2]}")
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            raise ValueError(f"annotation {ann.get('id')} in {self.annotation_json} has an empty mask")
        p = self.padding
        y0, y1 = max(0, ys.min() - p), min(rgb.shape[0], ys.max() + 1 + p)
        x0, x1 = max(0, xs.min() - p), min(rgb.shape[1], xs.max() + 1 + p)
        alpha = _feather(mask[y0:y1, x0:x1].astype(np.uint8) * 255, self.feather)
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
        """A uniformly drawn matching object."""
        return self.get(int(rng.integers(len(self.annotations))))


class BankSource(OutlierSource):
    """Serves banked outliers; the bank is opened lazily in each process (DataLoader workers)."""

    def __init__(
        self, bank: OutlierBank | str | os.PathLike, kinds: Sequence[str] = ("object",), cache_size: int = 256
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"BankSource: cache_size must be >= 0, got {cache_size}")
        self.root = Path(bank.root if isinstance(bank, OutlierBank) else bank)
        self.kinds = tuple(kinds)
        self.cache_size = int(cache_size)
        self._bank: OutlierBank | None = None
        self._keys: list[str] | None = None
        self._kind_ok: dict[str, bool] = {}
        # Decoded entries, per process (LRU): decompressing and verifying an entry costs
        # more than pasting it, and entries never change once committed.
        self._cache: OrderedDict[str, OutlierEntry] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        # The key snapshot travels to workers (so all workers draw from the same list);
        # the open bank does not.
        state = self.__dict__.copy()
        state["_bank"] = None
        state["_cache"] = OrderedDict()
        return state

    @property
    def bank(self) -> OutlierBank:
        """The bank, opened read-only on first use in this process."""
        if self._bank is None:
            self._bank = OutlierBank(self.root, mode="r")
        return self._bank

    def refresh(self) -> int:
        """Re-scan the bank for entries added since (call between epochs); returns the count."""
        self.bank.refresh()
        self._keys = self.bank.keys()
        return len(self._keys)

    def __len__(self) -> int:
        if self._keys is None:
            self.refresh()
        return len(self._keys or [])

    @property
    def corrupt_skipped(self) -> int:
        """Corrupt entries skipped in this process."""
        return self.bank.corrupt_skipped if self._bank is not None else 0

    def sample(self, rng: np.random.Generator) -> OutlierEntry | None:
        """A random banked entry of an accepted kind (None if the bank has none)."""
        if self._keys is None:
            self.refresh()
        for _ in range(8):
            entry = self._draw(rng)
            if entry is None or entry.kind in self.kinds:
                return entry
        return None

    def _draw(self, rng: np.random.Generator, max_tries: int = 8) -> OutlierEntry | None:
        """A random entry through the cache; corrupt entries are skipped and counted by the bank."""
        pool = self._keys or []
        if not pool:
            return None
        for _ in range(max_tries):
            key = pool[int(rng.integers(len(pool)))]
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                return entry
            try:
                entry = self.bank.get(key)
            except (CorruptEntryError, KeyError) as e:
                self.bank.corrupt_skipped += 1
                log.warning("skipping outlier bank entry: %s", e)
                continue
            if self.cache_size:
                self._cache[key] = entry
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return entry
        return None


def fill_bank(
    source: OutlierSource,
    bank: OutlierBank,
    n: int,
    seed: int = 0,
    namespace: str = "fill",
    max_failures: int = 10,
) -> list[str]:
    """Add ``n`` outliers from ``source`` to ``bank``; resumable (done slots are skipped). Returns the keys."""
    keys: list[str] = []
    failures = 0
    for slot in range(int(n)):
        key = OutlierBank.make_key(namespace, seed, slot)
        if key in bank:
            keys.append(key)
            continue
        entry = source.sample(numpy_generator(seed, namespace, slot))
        if entry is None:
            failures += 1
            if failures > max_failures:
                raise RuntimeError(
                    f"source {type(source).__name__} returned nothing {failures} times while filling {bank.root}"
                )
            continue
        if entry.seed is None:
            entry.seed = int(seed)
        entry.metadata.setdefault("slot", slot)
        keys.append(bank.add(entry, key=key))
    return keys


@dataclass
class ProducerSpec:
    """A picklable recipe for an outlier source built inside another process: class path + arguments.

    ``class_path`` is a dotted path (``"synthrel_lightning.synthesis.ProceduralObjectSource"``,
    or an engine-backed producer); a ``device`` argument is filled in when the class
    accepts one and ``init_args`` does not set it.
    """

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)

    def build(self, device: str | None = None) -> OutlierSource:
        """Import the class and instantiate it."""
        module_name, _, attr = self.class_path.rpartition(".")
        if not module_name:
            raise ValueError(
                f"ProducerSpec.class_path must be a dotted path 'package.module.Class', got {self.class_path!r}"
            )
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"ProducerSpec: cannot import {self.class_path!r}: {e}") from e
        kwargs = dict(self.init_args)
        if device is not None and "device" not in kwargs:
            try:
                if "device" in inspect.signature(cls).parameters:
                    kwargs["device"] = device
            except (TypeError, ValueError):
                pass
        source = cls(**kwargs)
        if not callable(getattr(source, "sample", None)):
            raise TypeError(f"ProducerSpec: {self.class_path} instances have no sample(rng) method")
        return source


def produce_into_bank(
    producer: ProducerSpec | OutlierSource | Callable[[], OutlierSource],
    bank_root: str | os.PathLike,
    n: int,
    seed: int,
    namespace: str,
    device: str | None = None,
    max_consecutive_failures: int = 5,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Generate ``n`` outliers into the bank, tolerating failures; resumable. Returns the counts.

    Item ``i`` uses ``numpy_generator(seed, namespace, i)`` and the key
    ``make_key(namespace, seed, i)``, so a re-run skips finished items.
    """
    status: dict[str, Any] = {"produced": 0, "skipped": 0, "failed": 0, "errors": [], "fatal": None}

    def _report() -> None:
        if report is not None:
            report(dict(status, errors=list(status["errors"])))

    try:
        if isinstance(producer, ProducerSpec):
            source = producer.build(device)
        elif callable(getattr(producer, "sample", None)):
            source = producer  # type: ignore[assignment]
        elif callable(producer):
            source = producer()
        else:
            raise TypeError(f"producer must be a ProducerSpec, a source or a factory, got {type(producer).__name__}")
        bank = OutlierBank(bank_root, mode="a")
    except Exception as e:  # noqa: BLE001 - reported to the parent, which keeps training
        status["fatal"] = f"{type(e).__name__}: {e}"
        _report()
        return status
    consecutive = 0
    for i in range(int(n)):
        key = OutlierBank.make_key(namespace, seed, i)
        if key in bank:
            status["skipped"] += 1
            continue
        try:
            entry = source.sample(numpy_generator(seed, namespace, i))
            if entry is None:
                raise RuntimeError("the producer returned no outlier")
            if entry.seed is None:
                entry.seed = int(seed)
            entry.metadata.setdefault("slot", i)
            entry.metadata.setdefault("namespace", namespace)
            bank.add(entry, key=key)
            status["produced"] += 1
            consecutive = 0
        except Exception as e:  # noqa: BLE001 - one bad item must not stop the others
            status["failed"] += 1
            consecutive += 1
            status["errors"] = (status["errors"] + [f"{type(e).__name__}: {e}"])[-5:]
            log.warning("outlier generation failed for item %d of %s: %s", i, namespace, e)
            if consecutive >= max_consecutive_failures:
                status["fatal"] = f"{consecutive} consecutive failures, last: {type(e).__name__}: {e}"
                break
        _report()
    _report()
    return status


class InpaintingSource(OutlierSource):
    """Makes outliers by inpainting objects into real frames with the inpainting engine (the GPU producer).

    Draws a frame from ``frames`` (a dataset of raw samples; or a Cityscapes root with
    ``frames_root``/``split``), a box from ``placement``, an object from ``vocabulary``,
    and returns the engine's entry (``kind`` "object" crop or whole "frame"). Built inside
    the background process of :class:`~synthrel_lightning.synthesis.refresh.OutlierBankRefresh`
    via a :class:`ProducerSpec`, so the diffusion model lives on ``device`` there.
    """

    def __init__(
        self,
        frames: Any = None,
        frames_root: str | os.PathLike | None = None,
        split: str = "train",
        engine: dict[str, Any] | Any = None,
        vocabulary: Sequence[str] | None = None,
        placement: Any = None,
        kind: str = "object",
        device: str | None = None,
    ) -> None:
        if frames is None and frames_root is None:
            raise ValueError(
                "InpaintingSource needs frames (a dataset of raw samples) or frames_root (a Cityscapes root)"
            )
        if kind not in ("object", "frame"):
            raise ValueError(f"InpaintingSource kind must be 'object' or 'frame', got {kind!r}")
        if frames is None:
            from synthrel_lightning.data.cityscapes import CityscapesDataset

            frames = CityscapesDataset(frames_root, split=split)  # type: ignore[arg-type]
        from synthrel_lightning.synthesis.engine import InpaintingEngine
        from synthrel_lightning.synthesis.placement import PlacementSampler
        from synthrel_lightning.synthesis.vocabulary import PAPER_OBJECTS

        if engine is None or isinstance(engine, dict):
            args = dict(engine or {})
            if device is not None:
                args.setdefault("device", device)
            engine = InpaintingEngine(**args)
        self.frames = frames
        self.engine = engine
        self.vocabulary = tuple(vocabulary) if vocabulary else PAPER_OBJECTS
        self.placement = placement if placement is not None else PlacementSampler()
        self.kind = kind

    def sample(self, rng: np.random.Generator) -> OutlierEntry:
        """One inpainted object; raises RuntimeError when the engine rejects it (the caller counts it)."""
        i = int(rng.integers(len(self.frames)))
        raw = self.frames[i]
        label = raw.get("label")
        where = self.placement.sample(label, rng, shape=raw["image"].shape[:2])
        if where is None:
            raise RuntimeError(f"no placement for frame {raw.get('name', i)!r}")
        obj = self.vocabulary[int(rng.integers(len(self.vocabulary)))]
        seed = int(rng.integers(2**31 - 1))
        result = self.engine.synthesize(raw["image"], where, obj, seed, label=label)
        if not result.ok:
            raise RuntimeError(f"inpainting {obj!r} into {raw.get('name', i)!r} was rejected: {result.reason}")
        result.metadata.setdefault("frame", raw.get("name", str(i)))
        return result.to_entry(self.kind, base_label=label)
