"""How the OOD segmenter is set up: the output kind a segmenter declares, freezing by name, config detection."""

from __future__ import annotations

import re
from typing import cast

from torch import nn

from synthrel_lightning.scores.protocol import OutputKind


def built_from_config() -> bool:
    """True while LightningCLI (or its checkpoint instantiator) constructs the module from a config."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - other Lightning versions
        return False
    return _given_hyperparameters.get() is not None


def declared_output_kind(segmenter: nn.Module) -> OutputKind:
    """The output kind a segmenter declares (``output_kind``), or that its transformers config names."""
    kind = getattr(segmenter, "output_kind", None)
    if kind is None:
        model_type = getattr(getattr(segmenter, "config", None), "model_type", None)
        kind = "mask_classification" if model_type in ("mask2former", "maskformer", "oneformer") else "per_pixel"
    if kind not in ("per_pixel", "mask_classification"):
        raise ValueError(
            f"OODSegmenter: {type(segmenter).__name__}.output_kind is {kind!r}; expected 'per_pixel' or "
            "'mask_classification'"
        )
    return cast(OutputKind, kind)  # one of the two, checked above


def freeze_except(module: nn.Module, patterns: list[str], who: str) -> list[str]:
    """Freeze every parameter of ``module`` whose name matches none of ``patterns`` (regular expressions)."""
    compiled = [re.compile(p) for p in patterns]
    kept: list[str] = []
    for pname, param in module.named_parameters():
        keep = any(c.search(pname) for c in compiled)
        param.requires_grad_(keep)
        if keep:
            kept.append(pname)
    if not kept:
        raise ValueError(
            f"{who}: trainable patterns {patterns} match no parameter of {type(module).__name__}; "
            f"e.g. {[n for n, _ in module.named_parameters()][:5]}"
        )
    return kept


__all__ = ["built_from_config", "declared_output_kind", "freeze_except"]
