"""In-domain generator fine-tuning: conditioning encodings, captions, ControlNet training, domain-shift rendering.

Names are imported lazily, so ``import synthrel_lightning.generators`` stays cheap.
"""

from __future__ import annotations

from synthrel_lightning._lazy import lazy_exports

_LAZY: dict[str, str] = {
    # encodings
    "LabelEncoding": "encodings",
    "ENCODINGS": "encodings",
    "EncodingError": "encodings",
    "get_encoding": "encodings",
    "resolve_encoding": "encodings",
    "train_ids_to_label_ids": "encodings",
    # captions
    "CaptionFile": "captions",
    "CaptionError": "captions",
    "Captioner": "captions",
    "caption_split": "captions",
    # ControlNet fine-tuning
    "ControlNetDataModule": "controlnet_data",
    "ControlNetPairs": "controlnet_data",
    "ControlNetFineTuning": "controlnet_module",
    "ControlNetSampleLogger": "samples",
    # domain-shift rendering
    "DomainShiftGenerator": "domains",
    "DomainSample": "domains",
    "DomainWorkItems": "domain_generation",
    "generate_domains": "domain_generation",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, {name: f".{module}" for name, module in _LAZY.items()})
