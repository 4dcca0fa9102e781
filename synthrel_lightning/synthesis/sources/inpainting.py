"""Outliers made by inpainting objects into real frames with the inpainting engine (the GPU producer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from synthrel_lightning.synthesis.bank import OutlierEntry
from synthrel_lightning.synthesis.sources.base import OutlierSource

__all__ = ["InpaintingSource"]


class InpaintingSource(OutlierSource):
    """Inpaints one object into a random frame of ``frames`` per call (a dataset of raw samples).

    Draws a frame, a box from ``placement`` and an object from ``vocabulary`` (None/"paper",
    a file, or names; ``controls`` adds in-distribution classes), and returns the engine's
    entry: the object crop (``kind="object"``) or the whole frame (``"frame"``). Built in the
    background process of :class:`~synthrel_lightning.synthesis.refresh.OutlierBankRefresh`
    through a :class:`~synthrel_lightning.synthesis.sources.producer.ProducerSpec`, so the
    diffusion model lives on ``device`` there; ``engine`` may be a mapping of engine options.
    """

    def __init__(
        self,
        frames: Any,
        engine: Any = None,
        vocabulary: str | Sequence[str] | None = None,
        controls: Sequence[str] = (),
        placement: Any = None,
        kind: Literal["object", "frame"] = "object",
        max_tries: int = 3,
        device: str | None = None,
    ) -> None:
        if kind not in ("object", "frame"):
            raise ValueError(f"InpaintingSource kind must be 'object' or 'frame', got {kind!r}")
        if max_tries < 1:
            raise ValueError(f"InpaintingSource max_tries must be >= 1, got {max_tries}")
        if isinstance(frames, (str, bytes)) or not hasattr(frames, "__getitem__"):
            raise TypeError(
                f"InpaintingSource frames must be a dataset of raw samples (e.g. a CityscapesDataset), got {frames!r}"
            )
        from synthrel_lightning.synthesis.engine import InpaintingEngine
        from synthrel_lightning.synthesis.placement import PlacementSampler
        from synthrel_lightning.synthesis.vocabulary import resolve_vocabulary

        if engine is None or isinstance(engine, dict):
            args = dict(engine or {})
            if device is not None:
                args.setdefault("device", device)
            engine = InpaintingEngine(**args)
        self.frames = frames
        self.engine = engine
        self.vocabulary = resolve_vocabulary(vocabulary, controls)
        self.placement = placement if placement is not None else PlacementSampler()
        self.kind = kind
        self.max_tries = int(max_tries)

    def sample(self, rng: np.random.Generator) -> OutlierEntry:
        """One inpainted object; raises RuntimeError naming the last frame and reason when every try failed."""
        reason = ""
        for _ in range(self.max_tries):
            index = int(rng.integers(len(self.frames)))
            raw = self.frames[index]
            image = np.asarray(raw["image"])
            label = raw.get("label")
            label = None if label is None else np.asarray(label, dtype=np.uint8)
            name = str(raw.get("name", index))
            where = self.placement.sample(label, rng, shape=image.shape[:2])
            if where is None:
                reason = f"no placement for frame {name!r}"
                continue
            obj = self.vocabulary[int(rng.integers(len(self.vocabulary)))]
            seed = int(rng.integers(2**31 - 1))
            result = self.engine.synthesize(image, where, obj, seed, label=label)
            if result.ok:
                result.metadata.setdefault("frame", name)
                return result.to_entry(self.kind, base_label=label)
            reason = f"inpainting {obj.name!r} into {name!r} was rejected: {result.reason}"
        raise RuntimeError(f"{self.max_tries} tries failed; last: {reason}")
