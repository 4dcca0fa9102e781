"""Outlier mixing: paste synthetic objects into raw training frames (or swap in whole synthetic frames).

The mixer runs on the RAW sample (uint8 image, train-id label, binary ood) before the
augmentation transform, so the OOD mask travels through albumentations with the image.
Every random choice is drawn from ``numpy_generator(seed, "mix", epoch, index)``: the
same (seed, epoch, index) gives the same sample whatever the number of DataLoader
workers or ranks (each index is served by exactly one of them), and a resumed run sees
the same data.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import cv2
import numpy as np
from torch.utils.data import Dataset

from synthrel_lightning.labels import OOD_ID, OOD_NEGATIVE, OOD_POSITIVE, VOID_ID, semantic_to_ood_target
from synthrel_lightning.seeding import numpy_generator
from synthrel_lightning.synthesis.bank import OutlierEntry
from synthrel_lightning.synthesis.placement import PlacementSampler
from synthrel_lightning.synthesis.sources import OutlierSource

__all__ = ["OutlierMixer", "paste_object"]

log = logging.getLogger(__name__)

Sample = dict[str, Any]


def _resized_rgba(entry: OutlierEntry, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The entry's RGB and alpha at (width, height) (OpenCV bilinear; area averaging when shrinking 2x or more)."""
    h, w = entry.rgb.shape[:2]
    if (w, h) == (width, height):
        return entry.rgb, entry.alpha
    # Bilinear aliases only when shrinking by 2x or more; area averaging is ~5x slower otherwise.
    interpolation = cv2.INTER_AREA if 2 * width <= w or 2 * height <= h else cv2.INTER_LINEAR
    rgb = cv2.resize(entry.rgb, (width, height), interpolation=interpolation)
    alpha = cv2.resize(entry.alpha, (width, height), interpolation=interpolation)
    return rgb.reshape(height, width, 3), alpha.reshape(height, width)


def _blend(region: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> None:
    """``region = round((rgb * a + region * (255 - a)) / 255)`` in place, exactly.

    The sum is an integer below 2**16 that is never a tie (``v / 255`` is never k + 0.5), so
    OpenCV's rounding scale by 1/255 gives the exact integer result, without an integer division.
    """
    a = cv2.merge((alpha, alpha, alpha)).astype(np.uint16)
    x = rgb.astype(np.uint16)
    x *= a
    y = region.astype(np.uint16)
    np.subtract(255, a, out=a)
    y *= a
    x += y
    region[...] = cv2.convertScaleAbs(x, alpha=1.0 / 255.0)


def paste_object(
    image: np.ndarray,
    label: np.ndarray,
    ood: np.ndarray,
    entry: OutlierEntry,
    x0: int,
    y0: int,
    width: int,
    height: int,
    ood_value: int = OOD_ID,
    alpha_threshold: float = 0.5,
) -> np.ndarray:
    """Alpha-blend ``entry`` resized to (width, height) at (x0, y0) in place; write its label; return its hard mask."""
    H, W = image.shape[:2]
    if width < 1 or height < 1 or x0 < 0 or y0 < 0 or x0 + width > W or y0 + height > H:
        raise ValueError(f"paste box ({x0}, {y0}, {width}x{height}) does not fit in a {W}x{H} frame")
    rgb, alpha = _resized_rgba(entry, width, height)
    # Only pixels with alpha > 0 change: blend the box around them (objects rarely fill theirs).
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if rows.size:
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        region = image[y0 + r0 : y0 + r1, x0 + c0 : x0 + c1]
        _blend(region, rgb[r0:r1, c0:c1], alpha[r0:r1, c0:c1])
    hard = alpha > int(np.floor(alpha_threshold * 255))  # alpha/255 > threshold
    if entry.label_value == OOD_ID:
        label[y0 : y0 + height, x0 : x0 + width][hard] = ood_value
        ood[y0 : y0 + height, x0 : x0 + width][hard] = OOD_POSITIVE
    else:
        # In-distribution controls: "was pasted" must not mean "is OOD".
        label[y0 : y0 + height, x0 : x0 + width][hard] = entry.label_value
        ood[y0 : y0 + height, x0 : x0 + width][hard] = OOD_NEGATIVE
    return hard


class OutlierMixer:
    """Composites outliers from ``source`` into raw samples with probability ``probability`` (seeded per sample).

    ``mode="composite"`` pastes ``num_objects`` objects, sized as a fraction
    ``size_range`` of the frame width (longest side) at uniform positions, or in boxes
    from ``placement`` (e.g. on the drivable area). ``mode="replace"`` swaps the whole
    frame for a synthetic one: a random sample of ``frames`` (a dataset of raw samples)
    or a ``kind="frame"`` entry drawn from ``source`` (POC style).

    ``copy_input=False`` pastes into the sample's own arrays instead of copies (saves
    copying the full frame, label and OOD map): only for datasets that decode fresh arrays
    on every read, never for frames kept in memory or shared between reads; read-only
    arrays are still copied.
    """

    def __init__(
        self,
        source: OutlierSource | None = None,
        probability: float = 0.5,
        num_objects: tuple[int, int] = (1, 3),
        size_range: tuple[float, float] = (0.05, 0.25),
        ood_value: int = OOD_ID,
        mode: Literal["composite", "replace"] = "composite",
        placement: PlacementSampler | None = None,
        frames: Dataset[Sample] | None = None,
        alpha_threshold: float = 0.5,
        seed: int = 0,
        copy_input: bool = True,
    ) -> None:
        if mode not in ("composite", "replace"):
            raise ValueError(f"OutlierMixer mode must be 'composite' or 'replace', got {mode!r}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"OutlierMixer probability must be in [0, 1], got {probability!r}")
        lo_n, hi_n = (int(v) for v in num_objects)
        if not 0 <= lo_n <= hi_n:
            raise ValueError(f"num_objects must satisfy 0 <= lo <= hi, got {num_objects!r}")
        lo_s, hi_s = (float(v) for v in size_range)
        if not 0.0 < lo_s <= hi_s <= 1.0:
            raise ValueError(f"size_range is a fraction of the frame width: need 0 < lo <= hi <= 1, got {size_range!r}")
        if source is None and (mode == "composite" or frames is None):
            raise ValueError("OutlierMixer needs a source (or, in mode='replace', a frames dataset)")
        if not 0.0 < alpha_threshold < 1.0:
            raise ValueError(f"alpha_threshold must be in (0, 1), got {alpha_threshold!r}")
        self.source = source
        self.probability = float(probability)
        self.num_objects = (lo_n, hi_n)
        self.size_range = (lo_s, hi_s)
        self.ood_value = int(ood_value)
        self.mode = mode
        self.placement = placement
        self.frames = frames
        self.alpha_threshold = float(alpha_threshold)
        self.seed = int(seed)
        self.copy_input = bool(copy_input)
        self.stats: dict[str, int] = {"mixed": 0, "objects": 0, "empty_source": 0, "no_placement": 0}
        """Per-process counters (informational; DataLoader workers keep their own)."""

    def refresh(self) -> None:
        """Let the source pick up new outliers (a bank written in the background)."""
        refresh = getattr(self.source, "refresh", None)
        if callable(refresh):
            refresh()

    def __call__(self, sample: Sample, index: int, epoch: int = 0) -> Sample:
        """The mixed raw sample (the input is not modified unless ``copy_input=False``)."""
        rng = numpy_generator(self.seed, "mix", int(epoch), int(index))
        if rng.random() >= self.probability:
            return sample
        if self.mode == "replace":
            return self._replace(sample, rng)
        return self._composite(sample, rng)

    # ---------------------------------------------------------------------------------
    def _composite(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image = self._own(sample["image"])
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"OutlierMixer expects a raw uint8 (H, W, 3) image, got {image.shape} (apply transforms after mixing)"
            )
        H, W = image.shape[:2]
        label = self._own(sample["label"]) if sample.get("label") is not None else np.full((H, W), VOID_ID, np.uint8)
        ood = self._own(sample["ood"]) if sample.get("ood") is not None else semantic_to_ood_target(label)
        # The real label decides placement: earlier pastes must not count as road.
        real_label = sample.get("label")
        if self.placement is not None and real_label is not None and np.may_share_memory(label, real_label):
            real_label = np.array(real_label, copy=True)
        n = int(rng.integers(self.num_objects[0], self.num_objects[1] + 1))
        pasted = 0
        for _ in range(n):
            entry = self.source.sample(rng)  # type: ignore[union-attr]
            if entry is None:
                self.stats["empty_source"] += 1
                continue
            h_obj, w_obj = entry.rgb.shape[:2]
            if self.placement is not None:
                where = self.placement.sample(real_label, rng, shape=(H, W))
                if where is None:
                    self.stats["no_placement"] += 1
                    continue
                scale = where.side / max(h_obj, w_obj)
                w, h = max(1, round(w_obj * scale)), max(1, round(h_obj * scale))
                x0 = where.x0 + (where.side - w) // 2
                y0 = where.y1 - h  # bottom-aligned: objects stand on the ground
            else:
                longest = rng.uniform(*self.size_range) * W
                scale = min(longest / max(h_obj, w_obj), W / w_obj, H / h_obj)
                w, h = max(1, min(W, round(w_obj * scale))), max(1, min(H, round(h_obj * scale)))
                x0 = int(rng.integers(0, W - w + 1))
                y0 = int(rng.integers(0, H - h + 1))
            paste_object(image, label, ood, entry, x0, y0, w, h, self.ood_value, self.alpha_threshold)
            pasted += 1
        if pasted == 0:
            return sample
        self.stats["mixed"] += 1
        self.stats["objects"] += pasted
        out = dict(sample)
        out.update(image=image, label=label, ood=ood)
        return out

    def _own(self, array: Any) -> np.ndarray:
        """``array`` as uint8 that may be written: a copy unless ``copy_input=False`` allows using it as is."""
        if not self.copy_input:
            out = np.asarray(array, dtype=np.uint8)
            if out.flags.writeable:
                return out
        return np.array(array, dtype=np.uint8, copy=True)

    def _replace(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if self.frames is not None:
            j = int(rng.integers(len(self.frames)))  # type: ignore[arg-type]
            frame = dict(self.frames[j])
            if frame.get("ood") is None:
                frame["ood"] = semantic_to_ood_target(np.asarray(frame["label"], dtype=np.uint8))
            self.stats["mixed"] += 1
            return frame
        entry = self.source.sample(rng)  # type: ignore[union-attr]
        if entry is None:
            self.stats["empty_source"] += 1
            return sample
        if entry.kind != "frame":
            raise ValueError(
                f"OutlierMixer(mode='replace') needs whole synthetic frames, got an {entry.kind!r} entry "
                f"({entry.name!r} from {entry.source!r}); use BankSource(bank, kinds=('frame',)) or pass frames="
            )
        hard = entry.alpha > int(np.floor(self.alpha_threshold * 255))
        if entry.label is not None:
            label = entry.label.copy()
        else:
            # Unknown scene semantics: only the object's pixels are labelled.
            label = np.full(entry.rgb.shape[:2], VOID_ID, np.uint8)
        value = self.ood_value if entry.label_value == OOD_ID else entry.label_value
        label[hard] = value
        ood = semantic_to_ood_target(label)
        if self.ood_value != OOD_ID:
            ood[label == self.ood_value] = OOD_POSITIVE
        ood[hard] = OOD_POSITIVE if entry.label_value == OOD_ID else OOD_NEGATIVE
        self.stats["mixed"] += 1
        name = f"synthetic/{entry.metadata.get('frame') or entry.source or entry.name}"
        return {"image": entry.rgb.copy(), "label": label, "ood": ood, "name": str(name)}
