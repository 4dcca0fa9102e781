"""Synthetic outliers: where objects go, how they are made, the on-disk bank, and mixing them into training.

Names are imported lazily so ``import synthrel_lightning.synthesis`` stays cheap (diffusers
and transformers are only imported by the inpainting code that needs them).
"""

from __future__ import annotations

from synthrel_lightning._lazy import lazy_exports

_LAZY: dict[str, str] = {
    # placement
    "Placement": "placement",
    "PlacementSampler": "placement",
    # bank
    "OutlierEntry": "bank",
    "OutlierBank": "bank",
    "CorruptEntryError": "bank",
    "BankWriteError": "bank",
    # paste sources
    "OutlierSource": "sources",
    "ProceduralObjectSource": "sources",
    "CocoObjectSource": "sources",
    "BankSource": "sources",
    "InpaintingSource": "sources",
    "fill_bank": "sources",
    "decode_coco_rle": "sources",
    "polygons_to_mask": "sources",
    # mixing
    "OutlierMixer": "mixing",
    "OutlierMixingDataset": "mixing",
    "paste_object": "mixing",
    # background generation
    "OutlierBankRefresh": "refresh",
    "ProducerSpec": "sources",
    "produce_into_bank": "sources",
    # inpainting engine, vocabulary, object masks
    "InpaintingEngine": "engine",
    "InpaintResult": "engine",
    "ModelLoadError": "engine",
    "VocabularyEntry": "vocabulary",
    "PAPER_OBJECTS": "vocabulary",
    "load_vocabulary": "vocabulary",
    "ObjectMasker": "object_masks",
    "build_masker": "object_masks",
    # tiny offline pipelines (tests, demo)
    "build_tiny_inpaint_pipeline": "tiny",
    "build_tiny_controlnet_pipeline": "tiny",
    "save_tiny_pipeline": "tiny",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, {name: f".{module}" for name, module in _LAZY.items()})
