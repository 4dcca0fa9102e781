"""Reference segmenters of the QC: any zoo entry, OOD segmenter or plain segmenter, predicting train ids.

A reference declares its classes (``class_names`` / ``num_classes`` of an
:class:`~synthrel_lightning.models.OODSegmenter` or of the module, or a transformers
``config.id2label``); they are checked against the set's classes before any frame is
scored, so a reference trained on another label set fails at start instead of filling
the table with meaningless scores.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthrel_lightning.qc.table import check_reference_name

__all__ = ["ReferenceSegmenter", "build_references", "check_classes", "ReferenceSpec"]

_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")

ReferenceSpec = Any
"""What :func:`build_references` accepts per reference: a :class:`ReferenceSegmenter`, a
:class:`~synthrel_lightning.correlation.zoo.ZooEntry` (or its mapping form with ``name``), or a
``(name, module)`` pair; a ``{name: module}`` mapping gives several."""


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("_", " ")


def _declared_classes(model: nn.Module) -> tuple[int | None, list[str] | None]:
    """(K, class names) a model declares; None where it declares nothing."""
    names = getattr(model, "class_names", None)
    k = getattr(model, "num_classes", None)
    inner = getattr(model, "segmenter", None)
    for holder in (model, inner, getattr(inner, "model", None), getattr(model, "model", None)):
        config = getattr(holder, "config", None)
        id2label = getattr(config, "id2label", None)
        if isinstance(id2label, Mapping) and id2label:
            labels = [str(id2label[i]) for i in sorted(id2label, key=int)]
            if k is None:
                k = len(labels)
            if names is None and not all(_GENERIC_LABEL.match(v) for v in labels):
                names = labels
            break
    if k is None and inner is not None:
        k = getattr(inner, "num_classes", None)
    return (None if k is None else int(k)), (None if names is None else [str(n) for n in names])


class ReferenceSegmenter:
    """A named segmenter predicting per-pixel classes (argmax of its class scores at the image size).

    ``model``: an :class:`~synthrel_lightning.models.OODSegmenter` (its ``raw_logits``), any LightningModule
    or ``nn.Module`` returning per-pixel logits or mask-classification outputs (see
    :func:`~synthrel_lightning.models.outputs.identify_output`). ``class_names`` overrides what the model
    declares. ``calls`` counts forward passes (a resumed run makes none for frames already scored).
    """

    def __init__(self, name: str, model: nn.Module, class_names: Sequence[str] | None = None) -> None:
        self.name = check_reference_name(name)
        self.model = model
        k, declared = _declared_classes(model)
        self.class_names = list(class_names) if class_names is not None else declared
        self.num_classes = len(self.class_names) if self.class_names is not None else k
        self.calls = 0
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"ReferenceSegmenter({self.name!r}, {type(self.model).__name__}, classes={self.num_classes})"

    def to(self, device: torch.device | str) -> ReferenceSegmenter:
        """Move the model to ``device`` (eval mode)."""
        self.model.to(device).eval()
        return self

    @property
    def fingerprint(self) -> str:
        """SHA-1 of the model's class and state dict: a changed reference invalidates its table columns."""
        if self._fingerprint is None:
            h = hashlib.sha1(f"{type(self.model).__module__}.{type(self.model).__qualname__}".encode())
            for key, value in sorted(self.model.state_dict().items()):
                h.update(key.encode())
                if isinstance(value, Tensor):
                    t = value.detach().to("cpu").contiguous()
                    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @torch.no_grad()
    def class_scores(self, images: Tensor) -> Tensor:
        """Per-pixel class scores (B,K,H,W) at the images' size."""
        self.calls += 1
        size = tuple(images.shape[-2:])
        raw_logits = getattr(self.model, "raw_logits", None)
        if callable(raw_logits):
            return raw_logits(images, size)
        from synthrel_lightning.models.outputs import MaskClassificationOutput, identify_output

        _, content = identify_output(self.model(images), who=f"QC reference {self.name!r}")
        if isinstance(content, MaskClassificationOutput):
            masks = F.interpolate(content.mask_logits, size=size, mode="bilinear", align_corners=False)
            from synthrel_lightning.models.outputs import per_pixel_class_scores

            return per_pixel_class_scores(content.class_logits, masks)
        if content.ndim != 4:
            raise ValueError(f"QC reference {self.name!r} returned shape {tuple(content.shape)}, expected (B,K,h,w)")
        return F.interpolate(content, size=size, mode="bilinear", align_corners=False)

    def predict(self, images: Tensor) -> Tensor:
        """Predicted class ids (B,H,W) at the images' size; checks the class count on every call."""
        scores = self.class_scores(images)
        k = int(scores.shape[1])
        if self.num_classes is None:
            self.num_classes = k
        elif k != self.num_classes:
            raise ValueError(
                f"QC reference {self.name!r} predicts {k} classes but declares {self.num_classes}; check its head"
            )
        return scores.argmax(1)


def check_classes(reference: ReferenceSegmenter, set_classes: Sequence[str], where: str) -> None:
    """Raise when ``reference``'s classes differ from the set's (count, or names where both declare them)."""
    if reference.num_classes is None:
        return  # checked on the first prediction, before anything is written
    if reference.num_classes != len(set_classes):
        raise ValueError(
            f"QC reference {reference.name!r} has {reference.num_classes} classes but {where} is labelled with "
            f"{len(set_classes)} ({', '.join(set_classes)}); a reference must predict the set's classes"
        )
    if reference.class_names is not None:
        theirs = [_normalise(n) for n in reference.class_names]
        ours = [_normalise(n) for n in set_classes]
        if theirs != ours:
            diff = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(reference.class_names, set_classes))
                    if _normalise(a) != _normalise(b)]  # fmt: skip
            raise ValueError(
                f"QC reference {reference.name!r} names its classes differently from {where} "
                f"(id: reference vs set) {diff[:5]}; a reference must predict the set's classes in the set's order"
            )


def _from_zoo(entry: Any, trust_checkpoint: bool) -> ReferenceSegmenter:
    from synthrel_lightning.correlation.zoo import ZooEntry, instantiate_model

    if isinstance(entry, Mapping):
        entry = ZooEntry(**entry)
    try:
        model = instantiate_model(entry, trust_checkpoint=trust_checkpoint)
    except Exception as e:
        raise ValueError(f"QC reference {entry.name!r} could not be built: {e}") from e
    return ReferenceSegmenter(entry.name, model)


def build_references(specs: Sequence[ReferenceSpec] | Mapping[str, nn.Module] | None,
                     trust_checkpoint: bool = False) -> list[ReferenceSegmenter]:  # fmt: skip
    """Reference segmenters from zoo entries, ``(name, module)`` pairs, ``{name: module}`` or instances."""
    if specs is None:
        return []
    if isinstance(specs, Mapping):
        specs = list(specs.items())
    out: list[ReferenceSegmenter] = []
    for spec in specs:
        if isinstance(spec, ReferenceSegmenter):
            out.append(spec)
        elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], nn.Module):
            out.append(ReferenceSegmenter(str(spec[0]), spec[1]))
        elif isinstance(spec, Mapping) or type(spec).__name__ == "ZooEntry":
            out.append(_from_zoo(spec, trust_checkpoint))
        else:
            raise TypeError(
                f"QC references: cannot use {type(spec).__name__}; pass ZooEntry objects (or mappings with "
                "name/checkpoint/model/config), (name, module) pairs or ReferenceSegmenter objects"
            )
    seen: set[str] = set()
    for ref in out:
        if ref.name in seen:
            raise ValueError(f"QC references: the name {ref.name!r} is used twice")
        seen.add(ref.name)
    return out
