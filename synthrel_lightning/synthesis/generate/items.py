"""Generation work items: one (frame, slot) each, with its object, box and seed fixed by (seed, frame, slot)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from synthrel_lightning.seeding import derive_seed, numpy_generator
from synthrel_lightning.synthesis.bank import OutlierBank
from synthrel_lightning.synthesis.geometry import Box
from synthrel_lightning.synthesis.placement import PlacementSampler
from synthrel_lightning.synthesis.vocabulary import VocabularyEntry

__all__ = ["frame_name", "WorkItem", "WorkItemDataset", "WriteKind", "bank_keys"]

WriteKind = Literal["object", "frame", "both"]


def bank_keys(key: str, write: WriteKind) -> list[str]:
    """The bank keys one item writes: its object crop, its whole frame, or both."""
    return {"object": [key], "frame": [f"{key}-frame"], "both": [key, f"{key}-frame"]}[write]


@dataclass
class WorkItem:
    """One generation item: the frame to inpaint into, the object, its box (None: nothing placeable) and seed.

    ``error`` is set (and the image left empty) when the source frame could not be loaded: the
    item is then counted as failed and named in the summary instead of stopping the run.
    """

    key: str
    index: int
    slot: int
    name: str
    image: np.ndarray
    label: np.ndarray | None
    object: VocabularyEntry
    box: Box | None
    seed: int
    error: str | None = None

    @property
    def title(self) -> str:
        """A readable name for reports: ``<frame name>#<slot>``."""
        return f"{self.name}#{self.slot}"


def frame_name(dataset: Any, index: int) -> str | None:
    """The name of frame ``index`` of ``dataset`` when it lists ``frames`` with names, else None."""
    """The frame's name without decoding it, when the dataset lists its frames (``dataset.frames[i].name``)."""
    frames = getattr(dataset, "frames", None)
    if frames is not None and index < len(frames) and hasattr(frames[index], "name"):
        return str(frames[index].name)
    return None


def _raw_image(sample: dict[str, Any], index: int) -> np.ndarray:
    """The uint8 (H, W, 3) image of a raw source sample; a clear error for a transformed one."""
    image = np.asarray(sample["image"])
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(
            f"generate needs raw samples (image uint8 (H, W, 3)); source item {index} has image "
            f"{image.dtype} {image.shape}. Do not set a transform on the source dataset."
        )
    return image


class WorkItemDataset(Dataset):
    """The work items (frame index, slot) of a source dataset, minus those already complete.

    Item ``(i, slot)`` draws its object, box and seed from ``numpy_generator(seed, "generate", i, slot)``,
    so it is the same whatever the rank, worker or number of devices. ``is_done(key)`` tells whether an
    item's outputs all exist (a resumed run redoes items with a missing output).
    """

    def __init__(
        self,
        source: Dataset,
        vocabulary: Sequence[VocabularyEntry],
        placement: PlacementSampler,
        seed: int = 0,
        objects_per_frame: int = 1,
        max_frames: int | None = None,
        is_done: Callable[[str], bool] | None = None,
    ) -> None:
        if not vocabulary:
            raise ValueError("WorkItemDataset needs a non-empty vocabulary")
        if objects_per_frame < 1:
            raise ValueError(f"objects_per_frame must be >= 1, got {objects_per_frame}")
        self.source = source
        self.vocabulary = list(vocabulary)
        self.placement = placement
        self.seed = int(seed)
        # torch's Dataset declares no __len__; the map-style sets sampled here have one
        n = len(source) if max_frames is None else min(len(source), int(max_frames))  # type: ignore[arg-type]
        all_items = [(i, s) for i in range(n) for s in range(int(objects_per_frame))]
        self.items = [(i, s) for i, s in all_items if is_done is None or not is_done(self.key(i, s))]
        self.total = len(all_items)

    def key(self, index: int, slot: int) -> str:
        """The bank key of item (frame ``index``, ``slot``): stable across runs and device counts."""
        name = frame_name(self.source, index)
        return OutlierBank.make_key("inpaint", self.seed, name if name is not None else f"#{index}", slot)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> WorkItem:
        index, slot = self.items[k]
        rng = numpy_generator(self.seed, "generate", index, slot)
        entry = self.vocabulary[int(rng.integers(len(self.vocabulary)))]
        key, seed = self.key(index, slot), derive_seed(self.seed, "generate", index, slot)
        name = frame_name(self.source, index) or f"#{index}"
        try:
            sample = self.source[index]
            image = _raw_image(sample, index)
            label = sample.get("label")
            label = None if label is None else np.asarray(label, dtype=np.uint8)
            name = str(sample.get("name", name))
            placement = self.placement.sample(label, rng, shape=image.shape[:2])
        except Exception as e:  # noqa: BLE001 - a frame that cannot be read fails its item, not the run
            empty = np.zeros((0, 0, 3), np.uint8)
            return WorkItem(key, index, slot, name, empty, None, entry, None, seed, error=f"{type(e).__name__}: {e}")
        box = None if placement is None else placement.as_box()
        return WorkItem(key, index, slot, name, image, label, entry, box, seed)
