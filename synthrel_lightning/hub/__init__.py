"""Sharing trained models: save_pretrained / from_pretrained / push_to_hub and their model card."""

from synthrel_lightning.hub.model_card import render_model_card
from synthrel_lightning.hub.pretrained import (
    PretrainedError,
    PretrainedMixin,
    from_pretrained,
    model_spec_of,
    push_to_hub,
    save_pretrained,
)

__all__ = [
    "PretrainedError",
    "PretrainedMixin",
    "from_pretrained",
    "model_spec_of",
    "push_to_hub",
    "render_model_card",
    "save_pretrained",
]
