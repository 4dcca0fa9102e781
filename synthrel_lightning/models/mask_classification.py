"""Mask-classification segmenters from transformers: Mask2Former and OneFormer (semantic task).

Both return :class:`~synthrel_lightning.models.outputs.MaskClassificationOutput` and train with the
model's own criterion (Hungarian matching, class cross-entropy, mask BCE and Dice, on every decoder
layer) on mask/class labels built from the semantic label map; void and OOD pixels belong to no
mask, so the criterion ignores them (as RbA's semantic dataset mapper does).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthrel_lightning.models.outputs import MaskClassificationOutput


def mask_targets(target: Tensor, num_classes: int) -> tuple[list[Tensor], list[Tensor]]:
    """Per image, one binary mask (float) per class present in ``target`` (B,H,W) and its class id.

    Pixels with ids outside ``0..num_classes-1`` (void 255, OOD 254) are in no mask.
    """
    masks: list[Tensor] = []
    classes: list[Tensor] = []
    ids = torch.arange(num_classes, device=target.device)
    for frame in target:
        present = ids[torch.isin(ids, frame)]
        masks.append((frame[None] == present[:, None, None]).float())
        classes.append(present.long())
    return masks, classes


class _HFMaskClassifier(nn.Module):
    """Shared parts: padding to the backbone's stride, output cropping, label conversion, loading errors."""

    output_kind: ClassVar[str] = "mask_classification"
    #: Parameter-name patterns RbA leaves trainable (the transformer decoder's class and mask MLPs).
    rba_trainable: ClassVar[tuple[str, ...]] = ()
    size_divisor = 32

    model: nn.Module
    num_classes: int

    def _pad(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        h, w = images.shape[-2:]
        ph, pw = (-h) % self.size_divisor, (-w) % self.size_divisor
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph))
        return images, (h, w)

    @staticmethod
    def _crop(masks: Tensor, padded: tuple[int, int], size: tuple[int, int]) -> Tensor:
        mh = -(-size[0] * masks.shape[-2] // padded[0])
        mw = -(-size[1] * masks.shape[-1] // padded[1])
        return masks[..., :mh, :mw]

    def _output(
        self, out: Any, padded: tuple[int, int], size: tuple[int, int], aux_key: str
    ) -> MaskClassificationOutput:
        aux = [
            (a["class_queries_logits"], self._crop(a["masks_queries_logits"], padded, size))
            for a in (getattr(out, aux_key, None) or [])
        ]
        return MaskClassificationOutput(
            out.class_queries_logits, self._crop(out.masks_queries_logits, padded, size), aux
        )

    @staticmethod
    def _load(cls: Any, checkpoint: str, who: str, **kwargs: Any) -> nn.Module:
        try:
            return cls.from_pretrained(checkpoint, **kwargs)
        except OSError as err:
            raise ValueError(
                f"{who}: cannot load checkpoint {checkpoint!r} (expected a Hugging Face hub id reachable from this "
                f"machine, or a local folder with config.json): {err}"
            ) from err


class HFMask2Former(_HFMaskClassifier):
    """transformers ``Mask2FormerForUniversalSegmentation``, by checkpoint id/folder or from config values.

    Args:
        checkpoint: hub id or folder (e.g. ``facebook/mask2former-swin-large-cityscapes-semantic``).
        num_classes: K; a checkpoint with another class count gets a new class head.
        config: ``Mask2FormerConfig`` keyword arguments (random weights) when ``checkpoint`` is None.
    """

    rba_trainable = ("class_predictor", "mask_embedder")

    def __init__(
        self,
        checkpoint: str | None = "facebook/mask2former-swin-large-cityscapes-semantic",
        num_classes: int = 19,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

        if checkpoint is None and config is None:
            raise ValueError("HFMask2Former: give a checkpoint id/folder or a config dict")
        if checkpoint is not None:
            self.model = self._load(
                Mask2FormerForUniversalSegmentation,
                checkpoint,
                "HFMask2Former",
                num_labels=num_classes,
                ignore_mismatched_sizes=True,
            )
        else:
            cfg = {"use_pretrained_backbone": False, **(config or {})}
            self.model = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(num_labels=num_classes, **cfg))
        self.num_classes = int(num_classes)

    def forward(self, images: Tensor) -> MaskClassificationOutput:
        """Class and mask logits of the last and the auxiliary decoder layers (masks at 1/4 resolution)."""
        padded, size = self._pad(images)
        out = self.model(pixel_values=padded, output_auxiliary_logits=True)
        return self._output(out, tuple(padded.shape[-2:]), size, "auxiliary_logits")

    def criterion(self, output: MaskClassificationOutput, target: Tensor) -> dict[str, Tensor]:
        """Mask2Former's weighted losses (``loss_cross_entropy``, ``loss_mask``, ``loss_dice``, per layer)."""
        mask_labels, class_labels = mask_targets(target, self.num_classes)
        aux = [{"class_queries_logits": c, "masks_queries_logits": m} for c, m in output.aux]
        return self.model.get_loss_dict(output.mask_logits, output.class_logits, mask_labels, class_labels, aux)


class HFOneFormer(_HFMaskClassifier):
    """transformers ``OneFormerForUniversalSegmentation`` run on the semantic task.

    Args:
        checkpoint: hub id or folder (e.g. ``shi-labs/oneformer_cityscapes_swin_large``); the task
            prompt ("the task is semantic") is tokenized with the checkpoint's processor.
        num_classes: K.
        config: ``OneFormerConfig`` keyword arguments (random weights) when ``checkpoint`` is None.
        task_token_ids: the task prompt's token ids for a config-built model (padded to ``task_seq_len``).

    Training uses OneFormer's mask and class losses; the query-text contrastive loss needs the
    processor's per-image text queries and is left out.
    """

    rba_trainable = ("class_embed", "mask_embed")

    def __init__(
        self,
        checkpoint: str | None = "shi-labs/oneformer_cityscapes_swin_large",
        num_classes: int = 19,
        config: dict[str, Any] | None = None,
        task_token_ids: list[int] | None = None,
    ) -> None:
        super().__init__()
        from transformers import OneFormerConfig, OneFormerForUniversalSegmentation

        if checkpoint is None and config is None:
            raise ValueError("HFOneFormer: give a checkpoint id/folder or a config dict")
        if checkpoint is not None:
            self.model = self._load(
                OneFormerForUniversalSegmentation,
                checkpoint,
                "HFOneFormer",
                num_labels=num_classes,
                ignore_mismatched_sizes=True,
            )
            if task_token_ids is None:
                from transformers import AutoProcessor

                processor = self._load(AutoProcessor, checkpoint, "HFOneFormer")
                seq = self.model.config.task_seq_len
                task_token_ids = processor.tokenizer(
                    "the task is semantic", padding="max_length", max_length=seq, truncation=True
                )["input_ids"]
        else:
            cfg = {"use_pretrained_backbone": False, "is_training": False, **(config or {})}
            self.model = OneFormerForUniversalSegmentation(OneFormerConfig(num_labels=num_classes, **cfg))
            if task_token_ids is None:
                raise ValueError(
                    "HFOneFormer: a config-built model needs task_token_ids (the token ids of 'the task is semantic')"
                )
        seq = int(self.model.config.task_seq_len)
        if len(task_token_ids) > seq:
            raise ValueError(f"HFOneFormer: {len(task_token_ids)} task_token_ids exceed task_seq_len={seq}")
        ids = torch.zeros(seq, dtype=torch.long)
        ids[: len(task_token_ids)] = torch.as_tensor(task_token_ids, dtype=torch.long)
        self.register_buffer("task_inputs", ids, persistent=False)
        self.num_classes = int(num_classes)

    def forward(self, images: Tensor) -> MaskClassificationOutput:
        """Class and mask logits of the last and the auxiliary decoder layers (masks at 1/4 resolution)."""
        padded, size = self._pad(images)
        task = self.task_inputs[None].expand(images.shape[0], -1)
        out = self.model(pixel_values=padded, task_inputs=task)
        return self._output(out, tuple(padded.shape[-2:]), size, "auxiliary_predictions")

    def criterion(self, output: MaskClassificationOutput, target: Tensor) -> dict[str, Tensor]:
        """OneFormer's weighted mask/class losses (per decoder layer), without the contrastive term."""
        mask_labels, class_labels = mask_targets(target, self.num_classes)
        aux = [{"class_queries_logits": c, "masks_queries_logits": m} for c, m in output.aux]
        return self.model.get_loss_dict(
            output.mask_logits,
            output.class_logits,
            None,
            mask_labels,
            class_labels,
            None,
            aux,
            calculate_contrastive_loss=False,
        )


__all__ = ["HFMask2Former", "HFOneFormer", "mask_targets"]
