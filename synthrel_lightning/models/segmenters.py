"""Segmenter factories: any ``nn.Module`` mapping (B,3,H,W) images to (B,K,h,w) logits."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class SMPSegmenter(nn.Module):
    """A segmentation-models-pytorch model built by name (``smp.create_model``).

    ``encoder_weights=None`` builds random weights (works offline); ``"imagenet"``
    downloads the pretrained encoder on first use.
    """

    def __init__(
        self,
        arch: str = "DeepLabV3Plus",
        encoder_name: str = "resnet50",
        encoder_weights: str | None = "imagenet",
        num_classes: int = 19,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        try:
            self.model = smp.create_model(
                arch, encoder_name=encoder_name, encoder_weights=encoder_weights, classes=num_classes, **kwargs
            )
        except KeyError as err:
            raise ValueError(
                f"SMPSegmenter: unknown architecture or encoder ({arch!r}, {encoder_name!r}): {err}. "
                "See segmentation_models_pytorch's list of architectures and encoders."
            ) from err
        self.num_classes = num_classes
        # FPN/DeepLab/Segformer need sides divisible by the encoder's output stride.
        self.size_divisor = 32

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, K, H', W') for images whose sides are padded to a multiple of 32."""
        return _pad_and_crop(self.model, images, self.size_divisor)


class HFSegformer(nn.Module):
    """A transformers SegFormer, from a checkpoint id/folder or from config values.

    With ``checkpoint`` set, weights load through ``from_pretrained`` (the head is
    re-initialised when its class count differs); with only ``config`` (``SegformerConfig``
    keyword arguments) the weights are random and nothing is downloaded; with neither,
    :data:`DEFAULT_CHECKPOINT` (SegFormer-B0 fine-tuned on Cityscapes) loads.
    """

    DEFAULT_CHECKPOINT = "nvidia/segformer-b0-finetuned-cityscapes-1024-1024"

    def __init__(
        self,
        checkpoint: str | None = None,
        num_classes: int = 19,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        if checkpoint is None and config is None:
            checkpoint = self.DEFAULT_CHECKPOINT
        if checkpoint is not None:
            try:
                self.model = SegformerForSemanticSegmentation.from_pretrained(
                    checkpoint, num_labels=num_classes, ignore_mismatched_sizes=True, **(config or {})
                )
            except OSError as err:
                raise ValueError(
                    f"HFSegformer: cannot load checkpoint {checkpoint!r} (expected a Hugging Face hub id "
                    f"reachable from this machine, or a local folder with config.json): {err}"
                ) from err
        else:
            # num_labels: a PreTrainedConfig property its dataclass transform does not list as a field
            config_values = SegformerConfig(num_labels=num_classes, **(config or {}))  # type: ignore[call-arg]
            self.model = SegformerForSemanticSegmentation(config_values)
        self.num_classes = num_classes

    def forward(self, images: Tensor) -> Tensor:
        """Logits at 1/4 of the input resolution."""
        return self.model(pixel_values=images).logits


class TinySegmenter(nn.Module):
    """A small fully convolutional network (stride 4) for demos and tests on a CPU."""

    def __init__(self, num_classes: int = 19, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(depth):
            stride = 2 if i < 2 else 1
            layers += [
                nn.Conv2d(c_in, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            c_in = width
        layers += [
            nn.Conv2d(width, width, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, images: Tensor) -> Tensor:
        """Logits at 1/4 of the input resolution."""
        return self.head(self.features(images))


def _pad_and_crop(model: nn.Module, images: Tensor, divisor: int) -> Tensor:
    h, w = images.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph == 0 and pw == 0:
        return model(images)
    padded = torch.nn.functional.pad(images, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
    return model(padded)[..., :h, :w]
