"""Per-image features for clustered temperature scaling, as relis computes them, and one forward pass giving both.

relis (de Jorge et al., "Reliability in Semantic Segmentation: Are We on the Right Track?",
CVPR 2023; https://github.com/naver/relis, ``extract_features.py``) takes the deepest feature
map of the segmenter's backbone (B, C, h, w), sums it over the spatial dimensions and divides
the C-vector by its maximum: ``f = s / max(s)`` with ``s_c = sum_{y,x} F[c, y, x]``.

Here the backbone is the submodule named ``feature_module`` (a dotted path from the LightningModule,
e.g. ``segmenter.model.encoder``); a forward hook reads its output during the same forward pass
that yields the logits, so the model runs once. Without a name, the first of :data:`AUTO_FEATURE_MODULES`
the module has is used (segmentation-models-pytorch encoders, transformers SegFormer and
Mask2Former backbones, the demo's TinySegmenter).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthrel_lightning.calibration.logits import _images_and_labels, _module_device

AUTO_FEATURE_MODULES: tuple[str, ...] = (
    "segmenter.model.encoder",  # SMPSegmenter: smp encoder, a list of maps (deepest last)
    "segmenter.model.segformer.encoder",  # HFSegformer: last_hidden_state (B, C, h, w)
    "segmenter.model.model.pixel_level_module.encoder",  # HFMask2Former, HFOneFormer: BackboneOutput.feature_maps
    "segmenter.features",  # TinySegmenter
)
"""Backbones tried, in order, when no ``feature_module`` is named."""


def find_feature_module(module: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The submodule ``name`` (or the first of :data:`AUTO_FEATURE_MODULES` present), with its name."""
    names = [name] if name is not None else list(AUTO_FEATURE_MODULES)
    for candidate in names:
        try:
            return candidate, module.get_submodule(candidate)
        except AttributeError:
            continue
    if name is not None:
        raise ValueError(f"feature_module {name!r}: {type(module).__name__} has no such submodule")
    raise ValueError(
        f"clustered temperature scaling needs image features: {type(module).__name__} has none of the known "
        f"backbones {list(AUTO_FEATURE_MODULES)}; name its backbone with feature_module=<dotted path>"
    )


def deepest_map(output: Any) -> Tensor:
    """The deepest 4-D feature map of a backbone's output (a tensor, a list of maps, or a transformers output)."""
    if isinstance(output, Tensor):
        if output.ndim != 4:
            raise ValueError(f"backbone output has shape {tuple(output.shape)}; expected (B, C, h, w) feature maps")
        return output
    for key in ("feature_maps", "last_hidden_state", "hidden_states"):
        value = getattr(output, key, None)
        if value is None and isinstance(output, dict):
            value = output.get(key)
        if value is not None:
            return deepest_map(value)
    if isinstance(output, (list, tuple)):
        maps = [o for o in output if isinstance(o, Tensor) and o.ndim == 4]
        if maps:
            return maps[-1]
    raise ValueError(f"cannot find (B, C, h, w) feature maps in a backbone output of type {type(output).__name__}")


def relis_features(feature_map: Tensor) -> Tensor:
    """relis' image feature: the map summed over space, divided by its largest entry; (B, C) float64."""
    summed = feature_map.double().sum(dim=-1).sum(dim=-1)
    return summed / summed.amax(dim=1, keepdim=True)


class FeatureTap:
    """Captures the output of ``module``'s backbone during a forward pass (a removable forward hook)."""

    def __init__(self, module: nn.Module, feature_module: str | None = None) -> None:
        self.name, self.backbone = find_feature_module(module, feature_module)
        self.output: Any = None

    def __enter__(self) -> FeatureTap:
        def hook(_: nn.Module, __: Any, output: Any) -> None:
            self.output = output

        self._handle = self.backbone.register_forward_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def features(self) -> Tensor:
        """relis' features of the last forward pass, (B, C) float64."""
        if self.output is None:
            raise RuntimeError(f"the backbone {self.name!r} did not run during the forward pass")
        return relis_features(deepest_map(self.output))


def forward_with_features(
    module: nn.Module, images: Tensor, tap: FeatureTap, size: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Unscaled logits (B, K, H, W) at ``size`` (default: the images') and relis' features (B, C), one forward pass."""
    forward = getattr(module, "raw_logits", None) or module
    tap.output = None
    logits = forward(images)
    if isinstance(logits, dict):
        logits = logits["out"]
    size = size or tuple(images.shape[-2:])
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.float(), tap.features()


def collect_calibration_inputs(
    module: nn.Module,
    dataloader: Iterable[Any],
    feature_module: str | None = None,
    max_batches: int | None = None,
    with_features: bool = True,
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
    """Yield ``(logits (B,K,H,W), labels (B,H,W), images, features (B,C) or None)`` per batch, without gradients."""
    device = _module_device(module)
    was_training = module.training
    module.eval()
    tap = FeatureTap(module, feature_module) if with_features else None
    try:
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            images, labels = _images_and_labels(batch, i)
            images = images.to(device)
            labels = labels.to(device)
            with torch.no_grad():
                if tap is not None:
                    with tap:
                        logits, feats = forward_with_features(module, images, tap, tuple(labels.shape[-2:]))
                else:
                    logits, feats = forward_with_features_plain(module, images, tuple(labels.shape[-2:])), None
            yield logits, labels, images, feats
    finally:
        module.train(was_training)


def forward_with_features_plain(module: nn.Module, images: Tensor, size: tuple[int, int]) -> Tensor:
    """Unscaled logits (B, K, H, W) at ``size``."""
    forward = getattr(module, "raw_logits", None) or module
    logits = forward(images)
    if isinstance(logits, dict):
        logits = logits["out"]
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.float()


__all__ = [
    "AUTO_FEATURE_MODULES",
    "FeatureTap",
    "collect_calibration_inputs",
    "deepest_map",
    "find_feature_module",
    "forward_with_features",
    "relis_features",
]
