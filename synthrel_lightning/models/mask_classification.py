"""Mask-classification segmenters from transformers: Mask2Former and OneFormer (semantic task).

Both return :class:`~synthrel_lightning.models.outputs.MaskClassificationOutput` and train with the
model's own criterion (Hungarian matching, class cross-entropy, mask BCE and Dice, on every decoder
layer) on mask/class labels built from the semantic label map; void and OOD pixels belong to no
mask, so the criterion ignores them (as RbA's semantic dataset mapper does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthrel_lightning.labels import VOID_ID
from synthrel_lightning.models.outputs import MaskClassificationOutput

if TYPE_CHECKING:
    from transformers import PreTrainedModel


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


def _model_type(module: nn.Module) -> str | None:
    return getattr(getattr(module, "config", None), "model_type", None)


def _criterion_inputs(output: MaskClassificationOutput, target: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
    """Mask logits (last, auxiliary) and the label map, laid out as Mask2Former's training compares them.

    When the masks cover a padded input and the label covers the image, the label is padded with void
    (no mask there), as Mask2Former's ``prepare_targets`` pads the ground-truth masks with zeros;
    otherwise the masks are cut to the image.
    """
    padded, size = output.padded_size, output.image_size
    if padded is not None and size is not None and tuple(target.shape[-2:]) == tuple(size):
        ph, pw = padded[0] - size[0], padded[1] - size[1]
        if ph or pw:
            target = F.pad(target, (0, pw, 0, ph), value=VOID_ID)
        return output.mask_logits, [m for _, m in output.aux], target
    return output.image_region(output.mask_logits), [output.image_region(m) for _, m in output.aux], target


def mask2former_losses(model: Any, output: MaskClassificationOutput, target: Tensor) -> dict[str, Tensor]:
    """A transformers Mask2Former's weighted losses (class CE, mask BCE, Dice; last and auxiliary layers).

    ``model`` is a ``Mask2FormerForUniversalSegmentation`` (duck-typed: its ``get_loss_dict`` takes the
    per-image label lists and auxiliary list this passes, not the single tensors its annotations name).
    """
    masks, aux_masks, target = _criterion_inputs(output, target)
    mask_labels, class_labels = mask_targets(target, int(model.config.num_labels))
    aux = [{"class_queries_logits": c, "masks_queries_logits": m} for (c, _), m in zip(output.aux, aux_masks)]
    return model.get_loss_dict(masks, output.class_logits, mask_labels, class_labels, aux)


def oneformer_losses(model: Any, output: MaskClassificationOutput, target: Tensor) -> dict[str, Tensor]:
    """A transformers OneFormer's weighted mask/class losses (per decoder layer), without the contrastive term.

    ``model`` is a ``OneFormerForUniversalSegmentation`` (duck-typed as in :func:`mask2former_losses`).
    """
    masks, aux_masks, target = _criterion_inputs(output, target)
    mask_labels, class_labels = mask_targets(target, int(model.config.num_labels))
    aux = [{"class_queries_logits": c, "masks_queries_logits": m} for (c, _), m in zip(output.aux, aux_masks)]
    return model.get_loss_dict(
        masks, output.class_logits, None, mask_labels, class_labels, None, aux, calculate_contrastive_loss=False
    )


def _pad(images: Tensor, divisor: int) -> Tensor:
    """``images`` padded with zeros at the bottom and right to multiples of ``divisor`` (detectron2's ImageList)."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return F.pad(images, (0, pw, 0, ph)) if ph or pw else images


def _mask_output(out: Any, padded: Tensor, images: Tensor, aux_key: str) -> MaskClassificationOutput:
    aux = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in (getattr(out, aux_key, None) or [])]
    return MaskClassificationOutput(
        out.class_queries_logits,
        out.masks_queries_logits,
        aux,
        image_size=(int(images.shape[-2]), int(images.shape[-1])),
        padded_size=(int(padded.shape[-2]), int(padded.shape[-1])),
    )


def run_segmenter(segmenter: nn.Module, images: Tensor) -> Any:
    """Call ``segmenter`` on ``images``; a raw transformers Mask2Former runs as :class:`HFMask2Former` runs it.

    A raw ``Mask2FormerForUniversalSegmentation`` sees the images padded to a multiple of 32 and
    returns its auxiliary layers, so its scores and losses are those of the wrapped model. A raw
    ``OneFormerForUniversalSegmentation`` needs its task prompt, which only :class:`HFOneFormer` holds.
    """
    kind = None if isinstance(segmenter, _HFMaskClassifier) else _model_type(segmenter)
    if kind == "mask2former":
        padded = _pad(images, _HFMaskClassifier.size_divisor)
        out = segmenter(pixel_values=padded, output_auxiliary_logits=True)
        return _mask_output(out, padded, images, "auxiliary_logits")
    if kind == "oneformer":
        raise TypeError(
            "OODSegmenter: a raw transformers OneFormerForUniversalSegmentation needs its task prompt "
            "('the task is semantic', tokenized); wrap it: HFOneFormer.wrap(model, task_token_ids=...)"
        )
    return segmenter(images)


def model_criterion_of(segmenter: nn.Module) -> Callable[[MaskClassificationOutput, Tensor], dict[str, Tensor]] | None:
    """The mask-classification segmenter's own criterion as ``f(output, target) -> {name: loss}``, or None.

    Wrappers (:class:`HFMask2Former`, :class:`HFOneFormer`) and modules with a ``criterion(output,
    target)`` method give theirs; a raw transformers Mask2Former/OneFormer gets its model's
    ``get_loss_dict`` on mask/class labels (its ``criterion`` attribute is the loss module, which takes
    other arguments).
    """
    if isinstance(segmenter, _HFMaskClassifier):
        return segmenter.criterion
    kind = _model_type(segmenter)
    if kind == "mask2former":
        return functools.partial(mask2former_losses, segmenter)
    if kind == "oneformer":
        return functools.partial(oneformer_losses, segmenter)
    criterion = getattr(segmenter, "criterion", None)
    if callable(criterion) and not isinstance(criterion, nn.Module):
        return criterion
    return None


def load_swin_backbone(model: nn.Module, checkpoint: str) -> nn.Module:
    """Copy a transformers Swin checkpoint's weights (``SwinModel`` / ``SwinForImageClassification``) into
    a Mask2Former's Swin backbone; every backbone weight but the per-stage output norms must be there."""
    from transformers import SwinModel

    try:
        swin = SwinModel.from_pretrained(checkpoint, add_pooling_layer=False)
    except OSError as err:
        raise ValueError(
            f"backbone_checkpoint {checkpoint!r}: cannot load a transformers Swin checkpoint: {err}"
        ) from err
    hf: Any = model  # a transformers Mask2Former: its backbone is reached by attribute names
    target = hf.model.pixel_level_module.encoder.swin
    ours, theirs = target.state_dict(), swin.state_dict()
    for key, value in ours.items():
        if key not in theirs or tuple(theirs[key].shape) != tuple(value.shape):
            found = tuple(theirs[key].shape) if key in theirs else "missing"
            raise ValueError(
                f"backbone_checkpoint {checkpoint!r}: {key!r} is {found}, the backbone needs {tuple(value.shape)} "
                "(does backbone_config match the checkpoint's embed_dim, depths, num_heads, window_size?)"
            )
    target.load_state_dict(theirs, strict=True)
    return model


class _HFMaskClassifier(nn.Module):
    """Shared parts: the backbone's stride, wrapping a built model, loading errors."""

    output_kind: ClassVar[str] = "mask_classification"
    #: Parameter-name patterns RbA leaves trainable (the transformer decoder's class and mask MLPs).
    rba_trainable: ClassVar[tuple[str, ...]] = ()
    size_divisor = 32

    model: PreTrainedModel
    num_classes: int

    def criterion(self, output: MaskClassificationOutput, target: Tensor) -> dict[str, Tensor]:
        """The model's own weighted losses (each wrapper gives its model's)."""
        raise NotImplementedError

    @staticmethod
    def _num_labels(model: PreTrainedModel) -> int:
        """The class count of ``model``'s config (a model without one cannot be a segmenter here)."""
        n = model.config.num_labels
        if n is None:
            raise ValueError(f"{type(model).__name__}: its config has no id2label, so no class count (num_labels)")
        return int(n)

    @staticmethod
    def _load(cls: Any, checkpoint: str, who: str, **kwargs: Any) -> Any:
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
        config: ``Mask2FormerConfig`` keyword arguments (random weights) when ``checkpoint`` is None;
            RbA's one-decoder-layer models have ``decoder_layers: 2`` (its ``DEC_LAYERS``).
        detectron2_checkpoint: with ``checkpoint`` None, weights of a Mask2Former/RbA checkpoint in
            detectron2's format (``.pkl``/``.pth`` with a ``"model"`` state dict), read without running
            pickled code (see :func:`~synthrel_lightning.models.detectron2_import.load_detectron2_mask2former`).
        encoder_feature_levels: with ``config``, how many of the coarsest backbone levels the pixel
            decoder's deformable encoder reads (default 3, transformers' Mask2Former; RbA's Swin models: 1,
            its ``DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES: [res5]``).
        decoder_feature_levels: with ``config``, how many scales the transformer decoder attends to
            (default: ``encoder_feature_levels``, as RbA's code; the original Mask2Former code uses 3).
            A ``checkpoint`` folder carries both in its ``config.json``
            (see :class:`~synthrel_lightning.models.mask2former_levels.Mask2FormerLevelsForUniversalSegmentation`).
        backbone_checkpoint: with ``config``, pretrained weights of the Swin backbone from a transformers
            Swin checkpoint (hub id or folder, e.g. ``microsoft/swin-base-patch4-window12-384-in22k``, the
            ImageNet-22k Swin-B that Mask2Former's ``swin_base_patch4_window12_384_22k.pkl`` converts); the
            per-stage output norms stay newly initialized, as in Mask2Former's ``D2SwinTransformer``.
    """

    rba_trainable = ("class_predictor", "mask_embedder")

    def __init__(
        self,
        checkpoint: str | None = "facebook/mask2former-swin-large-cityscapes-semantic",
        num_classes: int = 19,
        config: dict[str, Any] | None = None,
        detectron2_checkpoint: str | None = None,
        encoder_feature_levels: int | None = None,
        decoder_feature_levels: int | None = None,
        backbone_checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import Mask2FormerConfig

        from synthrel_lightning.models.mask2former_levels import Mask2FormerLevelsForUniversalSegmentation

        if checkpoint is None and config is None:
            raise ValueError("HFMask2Former: give a checkpoint id/folder or a config dict")
        levels = {
            k: int(v)
            for k, v in (
                ("encoder_feature_levels", encoder_feature_levels),
                ("decoder_feature_levels", decoder_feature_levels),
            )
            if v is not None
        }
        if checkpoint is not None:
            extra = [*levels, *(["backbone_checkpoint"] if backbone_checkpoint is not None else [])]
            if extra:
                raise ValueError(
                    f"HFMask2Former: {', '.join(extra)} apply to a config-built model (checkpoint=None); the "
                    f"checkpoint {checkpoint!r} brings its own weights and config.json"
                )
            self.model = self._load(
                Mask2FormerLevelsForUniversalSegmentation,
                checkpoint,
                "HFMask2Former",
                num_labels=num_classes,
                ignore_mismatched_sizes=True,
            )
        else:
            cfg = {"use_pretrained_backbone": False, **(config or {}), **levels}
            # num_labels: a PreTrainedConfig property its dataclass transform does not list as a field
            config_values = Mask2FormerConfig(num_labels=num_classes, **cfg)  # type: ignore[call-arg]
            self.model = Mask2FormerLevelsForUniversalSegmentation(config_values)
            if backbone_checkpoint is not None:
                load_swin_backbone(self.model, backbone_checkpoint)
        if detectron2_checkpoint is not None:
            if backbone_checkpoint is not None:
                raise ValueError("HFMask2Former: detectron2_checkpoint holds the backbone; drop backbone_checkpoint")
            if checkpoint is not None:
                raise ValueError(
                    "HFMask2Former: give either checkpoint or detectron2_checkpoint (with config), not both"
                )
            from synthrel_lightning.models.detectron2_import import load_detectron2_mask2former

            load_detectron2_mask2former(self.model, detectron2_checkpoint)
        self.num_classes = int(num_classes)

    @classmethod
    def wrap(cls, model: PreTrainedModel) -> HFMask2Former:
        """An existing transformers ``Mask2FormerForUniversalSegmentation`` (its weights kept) as a segmenter."""
        if _model_type(model) != "mask2former":
            raise TypeError(f"HFMask2Former.wrap: expected a transformers Mask2Former, got {type(model).__name__}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.model = model
        self.num_classes = self._num_labels(model)
        return self

    def forward(self, images: Tensor) -> MaskClassificationOutput:
        """Class and mask logits of the last and the auxiliary decoder layers (masks at 1/4 resolution)."""
        padded = _pad(images, self.size_divisor)
        out = self.model(pixel_values=padded, output_auxiliary_logits=True)
        return _mask_output(out, padded, images, "auxiliary_logits")

    def criterion(self, output: MaskClassificationOutput, target: Tensor) -> dict[str, Tensor]:
        """Mask2Former's weighted losses (``loss_cross_entropy``, ``loss_mask``, ``loss_dice``, per layer)."""
        return mask2former_losses(self.model, output, target)


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
    task_inputs: Tensor

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
            # num_labels: a PreTrainedConfig property its dataclass transform does not list as a field
            config_values = OneFormerConfig(num_labels=num_classes, **cfg)  # type: ignore[call-arg]
            self.model = OneFormerForUniversalSegmentation(config_values)
            if task_token_ids is None:
                raise ValueError(
                    "HFOneFormer: a config-built model needs task_token_ids (the token ids of 'the task is semantic')"
                )
        self._set_task(task_token_ids)
        self.num_classes = int(num_classes)

    @classmethod
    def wrap(cls, model: PreTrainedModel, task_token_ids: list[int]) -> HFOneFormer:
        """An existing transformers ``OneFormerForUniversalSegmentation`` with its task prompt's token ids."""
        if _model_type(model) != "oneformer":
            raise TypeError(f"HFOneFormer.wrap: expected a transformers OneFormer, got {type(model).__name__}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.model = model
        self._set_task(task_token_ids)
        self.num_classes = self._num_labels(model)
        return self

    def _set_task(self, task_token_ids: list[int]) -> None:
        seq = int(self.model.config.task_seq_len)
        if len(task_token_ids) > seq:
            raise ValueError(f"HFOneFormer: {len(task_token_ids)} task_token_ids exceed task_seq_len={seq}")
        ids = torch.zeros(seq, dtype=torch.long)
        ids[: len(task_token_ids)] = torch.as_tensor(task_token_ids, dtype=torch.long)
        self.register_buffer("task_inputs", ids, persistent=False)

    def forward(self, images: Tensor) -> MaskClassificationOutput:
        """Class and mask logits of the last and the auxiliary decoder layers (masks at 1/4 resolution)."""
        padded = _pad(images, self.size_divisor)
        task = self.task_inputs[None].expand(images.shape[0], -1)
        out = self.model(pixel_values=padded, task_inputs=task)
        return _mask_output(out, padded, images, "auxiliary_predictions")

    def criterion(self, output: MaskClassificationOutput, target: Tensor) -> dict[str, Tensor]:
        """OneFormer's weighted mask/class losses (per decoder layer), without the contrastive term."""
        return oneformer_losses(self.model, output, target)


__all__ = [
    "HFMask2Former",
    "HFOneFormer",
    "mask2former_losses",
    "mask_targets",
    "model_criterion_of",
    "oneformer_losses",
    "run_segmenter",
]
