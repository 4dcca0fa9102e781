"""Synthetic outliers: where objects go, how they are made, the on-disk bank, and mixing them into training.

Folders and modules: ``geometry`` (the Box type), ``placement`` (where objects go),
``protocol`` (context crop, mask, paste-back), ``engine`` (Stable Diffusion inpainting, with
``frame_inpainting``, ``pipeline_loading`` and ``inpaint_result``),
``object_masks``, ``vocabulary``, ``bank`` (the on-disk outlier bank, with
``outlier_entry`` and ``entry_codec``), ``sources/`` (paste
sources and :func:`fill_bank`), ``mixing`` (into training frames), ``refresh`` (background
bank growth), ``generate/`` (the predict loop of ``python -m synthrel_lightning generate``),
``names`` (safe file names). Tiny offline pipelines live in :mod:`synthrel_lightning.testing`.

Names are imported lazily so ``import synthrel_lightning.synthesis`` stays cheap (diffusers
and transformers are only imported by the inpainting code that needs them).
"""

from __future__ import annotations

from synthrel_lightning._lazy import lazy_exports

_LAZY: dict[str, str] = {
    # geometry and placement
    "Box": "geometry",
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
    "FillReport": "sources",
    "decode_coco_rle": "sources",
    "polygons_to_mask": "sources",
    # mixing
    "OutlierMixer": "mixing",
    "paste_object": "mixing",
    # background generation
    "OutlierBankRefresh": "refresh",
    "ProducerSpec": "sources",
    # inpainting engine, vocabulary, object masks
    "InpaintingEngine": "engine",
    "InpaintResult": "engine",
    "ModelLoadError": "engine",
    "VocabularyEntry": "vocabulary",
    "PAPER_OBJECTS": "vocabulary",
    "load_vocabulary": "vocabulary",
    "ObjectMasker": "object_masks",
    "build_masker": "object_masks",
    # ahead-of-time generation
    "GenerationSummary": "generate",
    # safe names
    "check_name": "names",
    "path_within": "names",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, {name: f".{module}" for name, module in _LAZY.items()})
