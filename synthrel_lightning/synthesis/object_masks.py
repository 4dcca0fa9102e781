"""Masks of the inpainted object inside its context crop, rejection rules, and feathered alphas.

Methods (all share :meth:`ObjectMasker.mask`):

* ``"box"`` (:class:`BoxMasker`): the whole inpainted square.
* ``"changed"`` (:class:`ChangedPixelsMasker`): pixels that changed versus the original
  crop beyond a threshold, cleaned by morphology and kept as the largest component.
* ``"open_vocab"`` (:class:`OpenVocabMasker`): an open-vocabulary detector (OWLv2 or
  Grounding DINO) finds the object name on the crop (box/text thresholds 0.25, first
  detection), then SAM segments it from that box (top mask), as in the paper.

:class:`MaskRules` implements POC's rejection rules: a mask with less than 95% of its
area inside the box, covering less than 1% of the crop, or empty is rejected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from synthrel_lightning.synthesis.geometry import Box

__all__ = [
    "MaskRules",
    "MaskResult",
    "ObjectMasker",
    "BoxMasker",
    "ChangedPixelsMasker",
    "OpenVocabMasker",
    "build_masker",
    "feather",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskRules:
    """Rejection thresholds: minimum fraction of the mask inside the box, minimum fraction of the crop covered."""

    min_inside: float = 0.95
    min_area: float = 0.01

    def check(self, mask: np.ndarray, box: Box) -> str | None:
        """None if ``mask`` (crop-sized, bool) passes, else the reason it is rejected."""
        area = int(mask.sum())
        if area == 0:
            return "empty mask"
        inside = int(mask[box.slices].sum()) / area
        if inside < self.min_inside:
            return f"only {inside:.1%} of the mask lies inside the box (< {self.min_inside:.0%})"
        cover = area / mask.size
        if cover < self.min_area:
            return f"the mask covers {cover:.2%} of the crop (< {self.min_area:.0%})"
        return None


@dataclass
class MaskResult:
    """An object mask (crop-sized bool), whether it passed the rules, and why not."""

    mask: np.ndarray
    accepted: bool
    reason: str = ""


def feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-feathered alpha in [0, 1] (float32) of a bool mask (POC pastes objects with feathered edges)."""
    from scipy.ndimage import gaussian_filter

    m = mask.astype(np.float32)
    if sigma <= 0:
        return m
    return np.clip(gaussian_filter(m, sigma=float(sigma), mode="constant"), 0.0, 1.0)


class ObjectMasker:
    """Base class: finds the object mask in a crop and applies :class:`MaskRules`; counts outcomes in ``stats``."""

    compares_to_original: bool = False
    """True for maskers that find the object by comparing with the original frame: the engine then hands
    them the frame before its refinement pass (which re-renders every pixel)."""

    def __init__(self, rules: MaskRules | None = None) -> None:
        self.rules = rules if rules is not None else MaskRules()
        self.stats: dict[str, int] = {"accepted": 0, "rejected": 0}

    def find(self, crop: np.ndarray, original: np.ndarray, box: Box, object_name: str) -> np.ndarray:
        """The raw bool mask (crop-sized) of ``object_name`` in ``crop`` (uint8 HxWx3)."""
        raise NotImplementedError

    def mask(self, crop: np.ndarray, original: np.ndarray, box: Box, object_name: str) -> MaskResult:
        """Find the mask and check it against the rules (rejections are counted and logged)."""
        if crop.shape != original.shape or crop.ndim != 3:
            raise ValueError(
                f"crop and original must be the same (h, w, 3) shape, got {crop.shape} and {original.shape}"
            )
        m = np.asarray(self.find(crop, original, box, object_name), dtype=bool)
        reason = self.rules.check(m, box)
        if reason is None:
            self.stats["accepted"] += 1
            return MaskResult(m, True)
        self.stats["rejected"] += 1
        kind = "rejected_empty" if m.sum() == 0 else ("rejected_outside" if "inside" in reason else "rejected_small")
        self.stats[kind] = self.stats.get(kind, 0) + 1
        log.info("object mask for %r rejected: %s", object_name, reason)
        return MaskResult(m, False, reason)


class BoxMasker(ObjectMasker):
    """The whole inpainted square is the object (no segmentation)."""

    def find(self, crop: np.ndarray, original: np.ndarray, box: Box, object_name: str) -> np.ndarray:
        """A mask that is True exactly on the box."""
        m = np.zeros(crop.shape[:2], dtype=bool)
        m[box.slices] = True
        return m


class ChangedPixelsMasker(ObjectMasker):
    """Pixels whose colour changed by more than ``threshold`` (0..1, mean over RGB), cleaned and largest component."""

    compares_to_original = True

    def __init__(self, threshold: float = 0.12, opening: int = 2, rules: MaskRules | None = None) -> None:
        super().__init__(rules)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"ChangedPixelsMasker threshold must be in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        self.opening = int(opening)

    def find(self, crop: np.ndarray, original: np.ndarray, box: Box, object_name: str) -> np.ndarray:
        """The largest connected region of changed pixels, opened, closed and hole-filled."""
        from scipy import ndimage

        diff = np.abs(crop.astype(np.int16) - original.astype(np.int16)).mean(axis=2) / 255.0
        m = diff > self.threshold
        if self.opening > 0:
            st = np.ones((2 * self.opening + 1,) * 2, dtype=bool)
            m = ndimage.binary_opening(m, structure=st)
            m = ndimage.binary_closing(m, structure=st)
        labels, n = ndimage.label(m)
        if n == 0:
            return m
        sizes = np.bincount(labels.ravel())[1:]
        m = labels == (int(np.argmax(sizes)) + 1)
        return ndimage.binary_fill_holes(m)


class OpenVocabMasker(ObjectMasker):
    """Open-vocabulary detection (OWLv2 or Grounding DINO) of the object name, then SAM from the first box.

    Models are loaded lazily with ``from_pretrained`` (hub ids or local folders).
    ``detector``/``sam`` (model, processor) pairs may be passed directly (used by tests).
    """

    def __init__(
        self,
        detector_id: str = "google/owlv2-base-patch16-ensemble",
        sam_id: str = "facebook/sam-vit-base",
        detector_type: Literal["owlv2", "grounding_dino"] = "owlv2",
        box_threshold: float = 0.25,
        text_threshold: float = 0.25,
        device: str = "auto",
        rules: MaskRules | None = None,
        detector: tuple[Any, Any] | None = None,
        sam: tuple[Any, Any] | None = None,
    ) -> None:
        super().__init__(rules)
        if detector_type not in ("owlv2", "grounding_dino"):
            raise ValueError(f"detector_type must be 'owlv2' or 'grounding_dino', got {detector_type!r}")
        self.detector_id = detector_id
        self.sam_id = sam_id
        self.detector_type = detector_type
        self.box_threshold = float(box_threshold)
        self.text_threshold = float(text_threshold)
        self._device = device
        self._detector = detector
        self._sam = sam
        self.stats["no_detection"] = 0

    @property
    def device(self) -> Any:
        """The torch device the models run on."""
        from synthrel_lightning.devices import resolve_device

        return resolve_device(self._device, who="OpenVocabMasker")

    def _load(self, kind: str) -> tuple[Any, Any]:
        from transformers import (
            AutoModelForZeroShotObjectDetection,
            AutoProcessor,
            Owlv2ForObjectDetection,
            SamModel,
            SamProcessor,
        )

        # transformers model and processor classes (auto classes among them) share no base but from_pretrained
        model_cls: Any
        proc_cls: Any
        if kind == "sam":
            ident, model_cls, proc_cls = self.sam_id, SamModel, SamProcessor
        elif self.detector_type == "owlv2":
            ident, model_cls, proc_cls = self.detector_id, Owlv2ForObjectDetection, AutoProcessor
        else:
            ident, model_cls, proc_cls = self.detector_id, AutoModelForZeroShotObjectDetection, AutoProcessor
        try:
            model = model_cls.from_pretrained(ident).to(self.device).eval()
            processor = proc_cls.from_pretrained(ident)
        except (OSError, ValueError) as e:
            raise OSError(
                f"OpenVocabMasker: could not load {kind} model {ident!r}: expected a Hugging Face hub id "
                f"or a local folder saved with save_pretrained ({e})"
            ) from e
        return model, processor

    def detect(self, crop: np.ndarray, object_name: str) -> list[float] | None:
        """The first detected box ``[x0, y0, x1, y1]`` (crop pixels) of ``object_name``, or None."""
        import torch
        from PIL import Image

        if self._detector is None:
            self._detector = self._load("detector")
        model, processor = self._detector
        image = Image.fromarray(crop)
        h, w = crop.shape[:2]
        if self.detector_type == "owlv2":
            inputs = processor(text=[[f"a photo of a {object_name}"]], images=image, return_tensors="pt").to(
                self.device
            )
            with torch.inference_mode():
                outputs = model(**inputs)
            # OWLv2 pads the image to a square: boxes are relative to the padded square.
            side = max(h, w)
            res = processor.post_process_grounded_object_detection(
                outputs, threshold=self.box_threshold, target_sizes=[(side, side)]
            )[0]
        else:
            text = object_name.lower().strip().rstrip(".") + "."
            inputs = processor(images=image, text=text, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                outputs = model(**inputs)
            res = processor.post_process_grounded_object_detection(
                outputs,
                inputs["input_ids"],
                threshold=self.box_threshold,
                text_threshold=self.text_threshold,
                target_sizes=[(h, w)],
            )[0]
        boxes, scores = res["boxes"], res["scores"]
        if len(scores) == 0:
            return None
        # "First detection" = the most confident one.
        b = boxes[int(torch.argmax(scores))].float().cpu().tolist()
        return [max(0.0, b[0]), max(0.0, b[1]), min(float(w), b[2]), min(float(h), b[3])]

    def segment(self, crop: np.ndarray, box: list[float]) -> np.ndarray:
        """SAM's top-scoring mask (bool, crop-sized) for a box prompt."""
        import torch
        from PIL import Image

        if self._sam is None:
            self._sam = self._load("sam")
        model, processor = self._sam
        inputs = processor(images=Image.fromarray(crop), input_boxes=[[box]], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = model(**inputs, multimask_output=True)
        masks = processor.post_process_masks(
            outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0]  # (boxes, masks, H, W)
        scores = outputs.iou_scores.cpu()[0, 0]
        return masks[0, int(torch.argmax(scores))].numpy().astype(bool)

    def find(self, crop: np.ndarray, original: np.ndarray, box: Box, object_name: str) -> np.ndarray:
        """Detector box of the object name, then SAM's mask; an empty mask when nothing is detected."""
        det = self.detect(crop, object_name)
        if det is None:
            self.stats["no_detection"] += 1
            return np.zeros(crop.shape[:2], dtype=bool)
        return self.segment(crop, det)


def build_masker(method: str | ObjectMasker = "box", rules: MaskRules | None = None, **kwargs: Any) -> ObjectMasker:
    """An :class:`ObjectMasker` from a method name ("box", "changed", "open_vocab") or an instance."""
    if isinstance(method, ObjectMasker):
        return method
    classes = {"box": BoxMasker, "changed": ChangedPixelsMasker, "open_vocab": OpenVocabMasker}
    if method not in classes:
        raise ValueError(f"unknown object mask method {method!r}; expected one of {sorted(classes)} or an ObjectMasker")
    return classes[method](rules=rules, **kwargs)
