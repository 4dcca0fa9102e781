"""Work items of the domain-shift evaluation sets: sampling protocols, crops, output paths, pasted OOD objects.

Each (source frame, domain) item is the frame's label map, rendered by a
:class:`~synthrel_lightning.generators.domains.DomainShiftGenerator` and written to
``<out>/<domain>`` in the Cityscapes layout (``CityscapesDataset(root=<out>/<domain>)``
reads it). Two sampling protocols:

- ``"genval"`` (the default; GenVal, Loiseau et al., ECCV 2024, ``ControlNet/style_transfer.py``
  and ``ControlNet/dataset.py`` of https://github.com/valeoai/GenVal): ``num_samples`` (512)
  frames drawn uniformly WITH replacement from the source set, per domain; each label map
  cropped to a square of side min(H, W) at a uniformly random offset along its long side
  (every integer offset 0..W-H equally likely, as ``random.randint``), resized to 512x512 with
  NEAREST; prompt ``"<caption>, in <domain>, "`` (GenVal appends ``", " + a_prompt`` with an
  empty ``a_prompt``: :data:`~synthrel_lightning.generators.domains.GENVAL_PROMPT_TEMPLATE`).
  Draw ``k`` of frame ``<stem>`` is written as ``<domain>_<k>_<stem>`` (GenVal's naming), so a
  frame drawn twice gives two files. GenVal's draws come from Python's unseeded ``random``;
  here they are seeded from (seed, domain), so a run can be repeated and resumed.
- ``"deterministic_center"`` (ours): every source frame once, centred square crop (``crop="square"``)
  resized to ``resolution``, or the whole frame (``crop="full"``).

Joint shift sets (``sets="joint"`` or ``"both"``) put OOD objects in the shifted frame: an
object mask from an outlier source is pasted into the label map before rendering, its
pixels conditioned as ``ood_condition_id`` (Cityscapes "unlabeled" by default, so the
ControlNet draws no Cityscapes class there) and named in the prompt; the ground truth marks
them OOD (254). They are written as ``<out>/<domain>-ood`` in the layout of
:class:`~synthrel_lightning.data.synthetic.SyntheticFramesDataset` (``images/<key>.png``,
``labels/<key>_labelTrainIds.png``, ``labels/<key>_ood.png``, and ``labels/<key>_object.json``
naming the pasted object, which ``qc`` re-detects).

Items are seeded from (seed, kind, domain, frame name), so the output does not depend on
the number of devices, and items whose files exist are skipped (resume).

The predict loop that renders and writes the items is :mod:`~synthrel_lightning.generators.domain_generation`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from torch.utils.data import Dataset

from synthrel_lightning.generators.domains import check_domain_name, train_ids_to_label_ids
from synthrel_lightning.labels import LABEL_IDS, OOD_ID, label_ids_to_train_ids
from synthrel_lightning.paths import path_within
from synthrel_lightning.seeding import derive_seed, numpy_generator
from synthrel_lightning.synthesis.generate import frame_name
from synthrel_lightning.synthesis.placement import PlacementSampler
from synthrel_lightning.synthesis.protocol import snap_size
from synthrel_lightning.synthesis.sources import OutlierSource

__all__ = [
    "GENVAL_NUM_SAMPLES",
    "PROTOCOLS",
    "Crop",
    "Protocol",
    "SetKind",
    "DomainWorkItems",
    "check_protocol",
]

Crop = Literal["square", "full"]
Protocol = Literal["genval", "deterministic_center"]
PROTOCOLS: tuple[str, ...] = ("genval", "deterministic_center")
"""Sampling protocols of the rendered sets: GenVal's random draws, or every frame once, centre-cropped."""

GENVAL_NUM_SAMPLES = 512
"""Frames GenVal renders per domain (``style_transfer.py --num_samples``)."""
SetKind = Literal["shift", "joint", "both"]

_CS_IMAGE_SUFFIX = "_leftImg8bit.png"
_CS_LABEL_SUFFIX = "_gtFine_labelIds.png"


def _city_and_stem(dataset: Any, index: int, name: str) -> tuple[str, str]:
    """Cityscapes city folder and file stem of a source frame (its image's folder; else the name's first token)."""
    frames = getattr(dataset, "frames", None)
    image = getattr(frames[index], "image", None) if frames is not None and index < len(frames) else None
    if image is not None:
        path = Path(image)
        stem = path.name[: -len(_CS_IMAGE_SUFFIX)] if path.name.endswith(_CS_IMAGE_SUFFIX) else path.stem
        return path.parent.name or "frames", stem
    return (name.split("_", 1)[0] if "_" in name else "frames"), name


def _source_label_ids(dataset: Any, index: int) -> Path | None:
    """The source frame's official ``*_gtFine_labelIds.png`` if it has one (keeps every Cityscapes label id)."""
    frames = getattr(dataset, "frames", None)
    label = getattr(frames[index], "label", None) if frames is not None and index < len(frames) else None
    return Path(label) if label is not None and str(label).endswith(_CS_LABEL_SUFFIX) else None


def _resize(array: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    if array.shape[:2] == tuple(hw):
        return array
    from PIL import Image

    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(array).resize((hw[1], hw[0]), resample=resample))


def _square(array: np.ndarray, position: float | None = None) -> np.ndarray:
    """The square of side min(H, W): centred, or at offset ``floor(position * (L - s + 1))`` along the long side L."""
    h, w = array.shape[:2]
    s = min(h, w)
    if position is None:
        y, x = (h - s) // 2, (w - s) // 2
    else:
        offset = min(int(position * (max(h, w) - s + 1)), max(h, w) - s)
        y, x = (offset, 0) if h > w else (0, offset)
    return array[y : y + s, x : x + s]


def check_protocol(protocol: str) -> Protocol:
    """``protocol`` if it names a sampling protocol, else a ValueError listing the valid ones."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"domains: unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    return cast(Protocol, protocol)  # one of PROTOCOLS, checked above


class DomainWorkItems(Dataset):
    """Work items (source frame, domain, kind) of domain-shift sets, minus those whose files already exist.

    ``kind`` "shift" is written to ``<out>/<domain>/leftImg8bit|gtFine/<split>/<city>/<stem>_*.png``;
    "joint" (a shifted frame with pasted OOD objects) to ``<out>/<domain>-ood/images|labels/<stem>*.png``.
    With ``protocol="genval"`` each item is one of ``num_samples`` seeded draws (frame, crop
    position) per domain, with replacement, and ``<stem>`` is ``<domain>_<draw>_<frame stem>``.
    """

    def __init__(
        self,
        source: Dataset,
        out: str | os.PathLike[str],
        domains: Sequence[str],
        split: str = "val",
        crop: Crop = "square",
        resolution: int | None = 512,
        seed: int = 0,
        max_frames: int | None = None,
        captions: dict[str, str] | None = None,
        sets: SetKind = "shift",
        ood_objects: OutlierSource | None = None,
        placement: PlacementSampler | None = None,
        ood_condition_id: int = 0,
        protocol: Protocol = "genval",
        num_samples: int = GENVAL_NUM_SAMPLES,
    ) -> None:
        check_protocol(protocol)
        if protocol == "genval" and crop != "square":
            raise ValueError(
                f"protocol 'genval' renders square crops; crop={crop!r} needs protocol 'deterministic_center'"
            )
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if resolution is not None and int(resolution) < 8:
            raise ValueError(f"resolution must be >= 8 or None (the frame size), got {resolution}")
        if crop not in ("square", "full"):
            raise ValueError(f"crop must be 'square' (GenVal's 512x512) or 'full', got {crop!r}")
        if sets not in ("shift", "joint", "both"):
            raise ValueError(f"sets must be 'shift', 'joint' or 'both', got {sets!r}")
        if sets != "shift" and ood_objects is None:
            raise ValueError(f"sets={sets!r} pastes OOD objects: pass ood_objects (an outlier source)")
        if int(ood_condition_id) not in LABEL_IDS:
            raise ValueError(f"ood_condition_id must be a Cityscapes label id (0..33), got {ood_condition_id}")
        if not domains:
            raise ValueError("DomainWorkItems needs at least one domain")
        self.source, self.out, self.split = source, Path(out), check_domain_name(split)
        self.domains = [check_domain_name(d) for d in domains]
        self.crop, self.resolution, self.seed = crop, None if resolution is None else int(resolution), int(seed)
        self.captions = captions or {}
        self.ood_objects = ood_objects
        self.placement = (
            placement if placement is not None else PlacementSampler(size_range=(64, 160), reference_width=512)
        )
        self.ood_condition_id = int(ood_condition_id)
        self.protocol, self.num_samples = protocol, int(num_samples)
        kinds = {"shift": ["shift"], "joint": ["joint"], "both": ["shift", "joint"]}[sets]
        # torch's Dataset declares no __len__; the map-style sets rendered here have one
        n = len(source) if max_frames is None else min(len(source), int(max_frames))  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("DomainWorkItems: the source set has no frames")
        all_items: list[tuple[int, str, str, tuple[int, float] | None]] = []
        for d in self.domains:
            if protocol == "genval":
                frames, positions = self.draws(d, n)
                all_items += [
                    (int(frames[k]), d, kind, (k, float(positions[k])))
                    for k in range(self.num_samples)
                    for kind in kinds
                ]
            else:
                all_items += [(i, d, kind, None) for i in range(n) for kind in kinds]
        if protocol != "genval":  # frame-major order, as before
            all_items.sort(key=lambda it: (it[0], self.domains.index(it[1])))
        self.items = [it for it in all_items if not all(p.is_file() for p in self.paths(*it))]
        self.total = len(all_items)

    def draws(self, domain: str, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """GenVal's draws for ``domain``: ``num_samples`` frame indices (with replacement), crop positions in [0, 1)."""
        rng = numpy_generator(self.seed, "genval-draws", domain)
        return rng.integers(0, frames, size=self.num_samples), rng.random(self.num_samples)

    def frame_name(self, index: int) -> str:
        """The stable name of source frame ``index`` (without decoding it when the dataset lists its frames)."""
        name = frame_name(self.source, index)
        return name if name is not None else str(self.source[index].get("name", f"#{index}"))

    def paths(
        self, index: int, domain: str, kind: str = "shift", draw: tuple[int, float] | None = None
    ) -> tuple[Path, ...]:
        """The files of item (frame ``index``, ``domain``, ``kind``, GenVal draw); the image is first."""
        name = self.frame_name(index)
        city, stem = _city_and_stem(self.source, index, name)
        if draw is not None:
            stem = f"{domain}_{draw[0]}_{stem}"
        # Every part built from a name (domain, split, city, stem) is checked, so a frame named
        # "../x" or "/abs/x" cannot move a write outside the output folder.
        what = f"frame {name!r}"
        if kind == "joint":
            return (
                path_within(self.out, f"{domain}-ood", "images", f"{stem}.png", what=what),
                path_within(self.out, f"{domain}-ood", "labels", f"{stem}_labelTrainIds.png", what=what),
                path_within(self.out, f"{domain}-ood", "labels", f"{stem}_ood.png", what=what),
            )
        return (
            path_within(self.out, domain, "leftImg8bit", self.split, city, f"{stem}{_CS_IMAGE_SUFFIX}", what=what),
            path_within(self.out, domain, "gtFine", self.split, city, f"{stem}{_CS_LABEL_SUFFIX}", what=what),
        )

    def _geometry(self, array: np.ndarray, nearest: bool, position: float | None = None) -> np.ndarray:
        if self.crop == "square":
            array = _square(array, position)
            side = self.resolution if self.resolution is not None else array.shape[0]
            return _resize(array, (side, side), nearest)
        h, w = array.shape[:2]
        return _resize(array, snap_size(h, w, self.resolution if self.resolution is not None else max(h, w)), nearest)

    def _paste_objects(self, label_ids: np.ndarray, train_ids: np.ndarray, domain: str, name: str) -> tuple[str, int]:
        """Paste one OOD object mask into both maps (in place); returns its name and the pixels it covers."""
        if self.ood_objects is None:
            raise ValueError("DomainWorkItems: joint sets paste OOD objects: pass ood_objects (an outlier source)")
        rng = numpy_generator(self.seed, "joint", domain, name)
        for _ in range(8):
            entry = self.ood_objects.sample(rng)
            place = self.placement.sample(train_ids, rng)
            if entry is None or place is None:
                continue
            mask = _resize(
                (np.asarray(entry.alpha, dtype=np.float32) > 0.5).astype(np.uint8), (place.side, place.side), True
            )
            ys, xs = slice(place.y0, place.y0 + place.side), slice(place.x0, place.x0 + place.side)
            region = mask[: train_ids[ys, xs].shape[0], : train_ids[ys, xs].shape[1]].astype(bool)
            if not region.any():
                continue
            label_ids[ys, xs][region] = self.ood_condition_id
            train_ids[ys, xs][region] = OOD_ID
            return (entry.name or "object").replace("_", " "), int(region.sum())
        raise RuntimeError(f"could not place an OOD object in frame {name!r} ({domain}) after 8 tries")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, Any]:
        index, domain, kind, draw = self.items[k]
        sample = self.source[index]
        if sample.get("label") is None:
            raise ValueError(f"domain generation conditions on label maps, but source item {index} has no 'label'")
        name = str(sample.get("name", self.frame_name(index)))
        ids_file = _source_label_ids(self.source, index)
        if ids_file is not None:
            from synthrel_lightning.data.io import read_label

            label_ids = read_label(ids_file)
        else:
            label_ids = train_ids_to_label_ids(np.asarray(sample["label"]), what=f"label of source frame {name!r}")
        label_ids = np.array(self._geometry(label_ids, nearest=True, position=None if draw is None else draw[1]))
        train_ids = label_ids_to_train_ids(label_ids).copy()
        obj = None
        key = name if draw is None else f"{name}#{draw[0]}"
        if kind == "joint":
            obj, _ = self._paste_objects(label_ids, train_ids, domain, key)
        return {
            "index": index,
            "domain": domain,
            "kind": kind,
            "name": name,
            "label_ids": label_ids,
            "label": train_ids,
            "caption": self.captions.get(name),
            "object": obj,
            "seed": derive_seed(self.seed, "domains", kind, domain, key),
            "draw": None if draw is None else draw[0],
            "paths": [str(p) for p in self.paths(index, domain, kind, draw)],
        }
