"""Outlier sources (``sample(rng) -> OutlierEntry | None``) and the one function that fills a bank from any of them.

- :mod:`.base`: the :class:`OutlierSource` protocol;
- :mod:`.procedural`: textured random shapes (no data, no GPU);
- :mod:`.coco`: objects cut out of a COCO-format instance dataset;
- :mod:`.bank_source`: banked outliers served to the mixer;
- :mod:`.inpainting`: objects inpainted into real frames by the engine (GPU);
- :mod:`.producer`: a picklable recipe to build a source in another process;
- :mod:`.fill`: :func:`fill_bank`, resumable and failure-tolerant.
"""

from __future__ import annotations

from synthrel_lightning.synthesis.sources.bank_source import BankSource
from synthrel_lightning.synthesis.sources.base import OutlierSource, feathered_alpha
from synthrel_lightning.synthesis.sources.coco import CocoObjectSource, decode_coco_rle, polygons_to_mask
from synthrel_lightning.synthesis.sources.fill import FillReport, fill_bank
from synthrel_lightning.synthesis.sources.inpainting import InpaintingSource
from synthrel_lightning.synthesis.sources.procedural import ProceduralObjectSource
from synthrel_lightning.synthesis.sources.producer import ProducerSpec, instantiate

__all__ = [
    "BankSource",
    "CocoObjectSource",
    "FillReport",
    "InpaintingSource",
    "OutlierSource",
    "ProceduralObjectSource",
    "ProducerSpec",
    "decode_coco_rle",
    "feathered_alpha",
    "fill_bank",
    "instantiate",
    "polygons_to_mask",
]
